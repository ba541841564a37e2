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

from collections.abc import Iterable, Iterator
from enum import Enum

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from wlmserver.entry import Entry
from wlmserver.keys import CHARSET_VRS, SPS_SEQUENCE_TAG
from wlmserver.query import SPECIFIC_CHARACTER_SET, CompiledQuery, ItemQuery
from wlmserver.record import Record, Value

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


_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def element(tag: int, vr: str, value: Value) -> DataElement:
    """A pydicom element from a record's value (decoded text; the answer encodes it)."""
    if vr == "SQ":
        return DataElement(tag, vr, [full_dataset(item) for item in value])  # type: ignore[arg-type]
    values: list[object] = list(value)
    if vr in _INTEGER_VRS:
        values = [int(v) for v in value]  # type: ignore[arg-type]
    elif vr in _FLOAT_VRS:
        values = [float(v) for v in value]  # type: ignore[arg-type]
    elif vr == "AT":
        values = [int(v, 16) for v in value]  # type: ignore[arg-type]
    elif vr in _BYTES_VRS:
        return DataElement(tag, vr, bytes.fromhex(value[0]) if value else None)  # type: ignore[arg-type]
    if not values:
        return DataElement(tag, vr, None)
    return DataElement(tag, vr, values[0] if len(values) == 1 else values)


def full_dataset(record: Record) -> Dataset:
    """Every attribute of a record as a dataset."""
    ds = Dataset()
    for tag, vr, value in record:
        ds.add(element(tag, vr, value))
    return ds


def _empty_element(tag: int, template: DataElement) -> DataElement:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = str(template.VR)
    if " or " in vr:  # ambiguous dictionary VRs (US or SS ...): keep the request's
        vr = str(template.VR)
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def _fill(
    out: Dataset, template: Dataset, source: Record, item_query: ItemQuery, *, top: bool
) -> None:
    for requested in template:
        tag = int(requested.tag)
        if (tag & 0xFFFF) == 0 or (tag >> 16) == 0x0002:
            continue
        if top and tag in (SPS_SEQUENCE_TAG, SPECIFIC_CHARACTER_SET):
            continue
        vr = source.vr(tag)
        if requested.VR == "SQ":
            out.add(_sequence(tag, requested, source.items(tag), item_query.sequence(tag)))
        elif vr is None or vr == "SQ":
            out.add(_empty_element(tag, requested))
        else:
            out.add(element(tag, vr, source.text(tag)))


def _sequence(
    tag: int, requested: DataElement, have: tuple[Record, ...], item_query: ItemQuery | None
) -> DataElement:
    wanted = list(requested.value or [])
    if not wanted or len(wanted[0]) == 0:
        return DataElement(tag, "SQ", [full_dataset(item) for item in have])
    items = []
    for item in have:
        if item_query is not None and not item_query.matches(item):
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
