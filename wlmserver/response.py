"""Build the answer to a query for one entry: exactly the requested keys, one SPS item.

Values come from the entry; a requested attribute the entry lacks is returned zero-length
(Type 2 semantics), a requested sequence the entry lacks comes back empty. A requested sequence
with an empty item returns the entry's items whole; one with keys returns, of each item that
matches the keys, just those keys (C.2.2.2.6).

Answers carry text decoded from the file, so they are re-encoded for the wire: when any text
value is outside the default repertoire, the answer's Specific Character Set names a character
set that encodes every value (the file's own when it can, else ISO_IR 192, UTF-8). No character
is ever lost or mislabelled.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from enum import Enum

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from wlmserver.entry import Entry, to_record
from wlmserver.keys import CHARSET_VRS, SPS_SEQUENCE_TAG
from wlmserver.query import SPECIFIC_CHARACTER_SET, CompiledQuery, ItemQuery

UTF8 = "ISO_IR 192"


class CharsetPolicy(Enum):
    """Which Specific Character Set answers with non-ASCII text carry."""

    FILE = "file"
    """The worklist file's own character set when it encodes the answer (``-csk``)."""
    LATIN1 = "latin1"
    """ISO_IR 100 when it encodes the answer (``-cs1``)."""


def build_answer(
    query: CompiledQuery, entry: Entry, policy: CharsetPolicy = CharsetPolicy.FILE
) -> Dataset:
    """Build the C-FIND answer identifier of one matching entry.

    Parameters
    ----------
    query : CompiledQuery
        The compiled request.
    entry : Entry
        A matching entry.
    policy : CharsetPolicy
        Which character set to prefer for non-ASCII answers.

    Returns
    -------
    Dataset
        The requested keys, filled from the entry, with at most one SPS item.
    """
    answer = Dataset()
    _fill(answer, query.identifier, entry.top, query.top, top=True)
    if query.sps_keys is not None:
        item = Dataset()
        _fill(item, query.sps_keys, entry.sps, query.sps, top=False)
        answer.add(DataElement(SPS_SEQUENCE_TAG, "SQ", [item]))
    charset = choose_charset(_texts(answer), entry.charset, policy)
    if charset:
        answer.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return answer


def _plain(value: object) -> object:
    """Decoded values as plain text, so that the answer's own character set encodes them."""
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, MultiValue):
        return [str(v) if isinstance(v, PersonName) else v for v in value]
    return value


def _empty_element(tag: int, template: DataElement) -> DataElement:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = str(template.VR)
    if " or " in vr:  # ambiguous dictionary VRs (US or SS ...): keep the request's
        vr = str(template.VR)
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def _fill(
    out: Dataset, template: Dataset, source: Dataset, item_query: ItemQuery, *, top: bool
) -> None:
    for requested in template:
        tag = int(requested.tag)
        if (tag & 0xFFFF) == 0 or (tag >> 16) == 0x0002:
            continue
        if top and tag in (SPS_SEQUENCE_TAG, SPECIFIC_CHARACTER_SET):
            continue
        have = source.get(tag)
        if requested.VR == "SQ":
            out.add(_sequence(tag, requested, have, item_query.sequence(tag)))
        elif have is None:
            out.add(_empty_element(tag, requested))
        else:
            out.add(DataElement(tag, have.VR, _plain(have.value)))


def _sequence(
    tag: int, requested: DataElement, have: DataElement | None, item_query: ItemQuery | None
) -> DataElement:
    if have is None or have.VR != "SQ" or not have.value:
        return DataElement(tag, "SQ", [])
    wanted = list(requested.value or [])
    if not wanted or len(wanted[0]) == 0:
        return DataElement(tag, "SQ", [copy.deepcopy(item) for item in have.value])
    items = []
    for item in have.value:
        if item_query is not None and not item_query.matches(to_record(item)):
            continue
        new = Dataset()
        _fill(new, wanted[0], item, item_query or ItemQuery(), top=False)
        items.append(new)
    return DataElement(tag, "SQ", items)


def _texts(ds: Dataset) -> Iterator[str]:
    """Every text value of a dataset that the Specific Character Set applies to."""
    for elem in ds.iterall():
        if elem.VR in CHARSET_VRS and elem.value is not None:
            values: Iterable[object] = (
                elem.value if isinstance(elem.value, (MultiValue, list)) else [elem.value]
            )
            for v in values:
                yield str(v)


def can_encode(texts: Iterable[str], charset: tuple[str, ...]) -> bool:
    """Whether every character of ``texts`` can be encoded in a Specific Character Set.

    With code extensions (several values), each character may come from any of them.

    Examples
    --------
    >>> can_encode(["Müller"], ("ISO_IR 100",)), can_encode(["Δ"], ("ISO_IR 100",))
    (True, False)
    """
    codecs = [python_encoding.get(name or "ISO_IR 6", "") for name in charset or ("ISO_IR 6",)]
    if not all(codecs):
        return False
    for text in texts:
        for char in set(text):
            if char.isascii():
                continue
            if not any(_encodes(char, codec) for codec in codecs):
                return False
    return True


def _encodes(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def choose_charset(
    texts: Iterable[str], file_charset: tuple[str, ...], policy: CharsetPolicy
) -> tuple[str, ...]:
    """The Specific Character Set for an answer holding ``texts``; empty when all are ASCII.

    Examples
    --------
    >>> choose_charset(["Smith"], ("ISO_IR 100",), CharsetPolicy.FILE)
    ()
    >>> choose_charset(["Müller"], ("ISO_IR 100",), CharsetPolicy.FILE)
    ('ISO_IR 100',)
    >>> choose_charset(["Müller", "Δ"], ("ISO_IR 100",), CharsetPolicy.FILE)
    ('ISO_IR 192',)
    """
    texts = [t for t in texts if not t.isascii()]
    if not texts:
        return ()
    preferred = ("ISO_IR 100",) if policy is CharsetPolicy.LATIN1 else file_charset
    if preferred and any(preferred) and can_encode(texts, preferred):
        return preferred
    return (UTF8,)
