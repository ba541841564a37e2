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

from wlmserver.matching.encoding import AnswerItem, AnswerValue, EncodedAnswer
from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import CHARSET_VRS, MANDATORY_RETURN_TAGS, SPS_SEQUENCE_TAG
from wlmserver.matching.query import SPECIFIC_CHARACTER_SET, CompiledQuery, ItemQuery
from wlmserver.matching.record import Record

UTF8 = "ISO_IR 192"


class CharsetPolicy(Enum):
    """Which Specific Character Set answers with non-ASCII text carry."""

    FILE = "file"
    """The worklist file's own character set when it encodes the answer (``-csk``)."""
    LATIN1 = "latin1"
    """ISO_IR 100 when it encodes the answer (``-cs1``)."""


Plan = tuple[tuple[int, str, "Plan | None", "ItemQuery | None", bool], ...]
"""What to put in an answer: ``(tag, VR if absent, item plan, item query, whole items)``."""


def _plan(template: Dataset, item_query: ItemQuery, *, top: bool) -> Plan:
    steps: list[tuple[int, str, Plan | None, ItemQuery | None, bool]] = []
    for requested in template:
        tag = int(requested.tag)
        if (tag & 0xFFFF) == 0 or (tag >> 16) == 0x0002:
            continue
        if top and tag in (SPS_SEQUENCE_TAG, SPECIFIC_CHARACTER_SET):
            continue
        if requested.VR == "SQ":
            wanted = list(requested.value or [])
            if not wanted or len(wanted[0]) == 0:
                steps.append((tag, "SQ", None, None, True))
            else:
                nested = item_query.sequence(tag)
                sub = _plan(wanted[0], nested or ItemQuery(), top=False)
                steps.append((tag, "SQ", sub, nested, False))
        else:
            steps.append((tag, _empty_vr(tag, str(requested.VR)), None, None, False))
    return tuple(steps)


def _empty_vr(tag: int, requested_vr: str) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return requested_vr
    return requested_vr if " or " in vr else vr  # ambiguous (US or SS ...): the request's


def _plans(query: CompiledQuery) -> tuple[Plan, Plan | None]:
    """The answer plans of a query, made once per query."""
    cached = query.__dict__.get("_answer_plans")
    if cached is None:
        top = _plan(query.identifier, query.top, top=True)
        sps = None if query.sps_keys is None else _plan(query.sps_keys, query.sps, top=False)
        cached = (top, sps)
        object.__setattr__(query, "_answer_plans", cached)
    return cached


def _fill(plan: Plan, source: Record, omit_empty: bool = False) -> AnswerItem:
    out: AnswerItem = _fill_all(plan, source)
    if omit_empty:
        out = [e for e in out if e[0] in MANDATORY_RETURN_TAGS or not _is_empty(e)]
    return out


def _is_empty(element: tuple[int, str, AnswerValue]) -> bool:
    value = element[2]
    return not value or (element[1] != "SQ" and all(v == "" for v in value))


def _fill_all(plan: Plan, source: Record) -> AnswerItem:
    out: AnswerItem = []
    for tag, empty_vr, sub, item_query, whole in plan:
        vr = source.vr(tag)
        if empty_vr == "SQ":
            items = source.items(tag)
            if whole:
                out.append((tag, "SQ", [full_item(i) for i in items]))
            else:
                out.append(
                    (
                        tag,
                        "SQ",
                        [
                            _fill(sub, i)  # type: ignore[arg-type]
                            for i in items
                            if item_query is None or item_query.matches(i)
                        ],
                    )
                )
        elif vr is None or vr == "SQ":
            out.append((tag, empty_vr, ()))
        else:
            out.append((tag, vr, source.text(tag)))
    return out


def full_item(record: Record) -> AnswerItem:
    """Every attribute of a record, as answer elements."""
    out: AnswerItem = []
    for tag, vr, value in record:
        if vr == "SQ":
            out.append((tag, vr, [full_item(i) for i in value if isinstance(i, Record)]))
        else:
            out.append((tag, vr, value))  # type: ignore[arg-type]
    return out


def build_encoded(
    query: CompiledQuery,
    entry: Entry,
    policy: CharsetPolicy = CharsetPolicy.FILE,
    omit_empty_optional: bool = False,
) -> EncodedAnswer:
    """Build the C-FIND answer of one matching entry, ready to be sent.

    Parameters
    ----------
    query : CompiledQuery
        The compiled request.
    entry : Entry
        A matching entry.
    policy : CharsetPolicy
        Which character set to prefer for non-ASCII answers.
    omit_empty_optional : bool
        Leave out requested keys that are empty in the answer, except the Type 1 and 2 return
        keys of Table K.6-1 (PS3.4 K.6.1.2 requires those, zero-length when unknown); for
        stacks that choke on zero-length values (a modality profile's choice).

    Returns
    -------
    EncodedAnswer
        The requested keys, filled from the entry, with at most one SPS item, in tag order.
    """
    top_plan, sps_plan = _plans(query)
    elements = _fill(top_plan, entry.top, omit_empty_optional)
    if sps_plan is not None:
        elements.append((SPS_SEQUENCE_TAG, "SQ", [_fill(sps_plan, entry.sps, omit_empty_optional)]))
    charset = choose_charset(_texts(elements), entry.charset, policy)
    if charset:
        elements.append((SPECIFIC_CHARACTER_SET, "CS", charset))
    elements.sort(key=lambda e: e[0])
    return EncodedAnswer(elements, charset)


def build_answer(
    query: CompiledQuery,
    entry: Entry,
    policy: CharsetPolicy = CharsetPolicy.FILE,
    omit_empty_optional: bool = False,
) -> Dataset:
    """The same answer as :func:`build_encoded`, as a pydicom dataset."""
    return as_dataset(build_encoded(query, entry, policy, omit_empty_optional).answer_elements)


_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def as_dataset(elements: AnswerItem) -> Dataset:
    """Answer elements as a pydicom dataset."""
    ds = Dataset()
    for tag, vr, value in elements:
        ds.add(_data_element(tag, vr, value))
    return ds


def _data_element(tag: int, vr: str, value: AnswerValue) -> DataElement:
    if vr == "SQ":
        return DataElement(tag, vr, [as_dataset(item) for item in value])  # type: ignore[arg-type]
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


def _texts(elements: AnswerItem) -> Iterator[str]:
    """Every text value of answer elements that the Specific Character Set applies to."""
    for _tag, vr, value in elements:
        if vr == "SQ":
            for item in value:
                yield from _texts(item)  # type: ignore[arg-type]
        elif vr in CHARSET_VRS:
            yield from value  # type: ignore[misc]


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
