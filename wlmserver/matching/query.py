"""Compile a C-FIND identifier once into a query that runs over many entries.

Only the matching keys of the identifier become constraints (see
:class:`~wlmserver.matching.keys.MatchingKeys`); the others are return keys only (PS3.4
K.2.2.1.1.2), which the compiled query lists in :attr:`CompiledQuery.return_only` when they
hold a value, so that ``explain`` can say why they did not filter.

Compilation validates the matching keys: a value not valid for its VR, a sequence with more
than one item or an unknown character set raises :class:`QueryError`, which names the
offending element so the handler can answer with a failure status, OffendingElement and
ErrorComment. The value of a return key is not looked at (only its length is bounded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import (
    COMBINED_DATE_TIME,
    DEFAULT_MATCHING,
    SPS_EXPANSION_TAGS,
    SPS_SEQUENCE_TAG,
    WILDCARD_VRS,
    MatchingKeys,
    describe_tag,
)
from wlmserver.matching.primitives import (
    CombinedDateTime,
    Matcher,
    QueryValueError,
    combined_date_time,
    compile_value,
    range_form,
)
from wlmserver.matching.record import Record
from wlmserver.matching.status import Status

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052


#: PS3.5: ErrorComment (0000,0902) is LO, at most 64 characters.
ERROR_COMMENT_LENGTH = 64


def fit_comment(text: str, limit: int = ERROR_COMMENT_LENGTH) -> str:
    """Shorten an error text to fit an ErrorComment, keeping what the user must change.

    Long attribute keywords are shortened first (``ScheduledProcedureStep`` to ``SPS``, then
    the keyword to its tag), the rule that follows the colon is kept whole; only a text still
    too long is cut, at a word, with ``...``.

    Examples
    --------
    >>> fit_comment("ScheduledProcedureStepStartDate: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    'SPSStartDate: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD'
    >>> fit_comment("word " * 30)
    'word word word word word word word word word word word word...'
    """
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    subject, colon, rule = text.partition(": ")
    if colon:
        for short in (subject.replace("ScheduledProcedureStep", "SPS"), _tag_of(subject)):
            if short and len(short) + 2 + len(rule) <= limit:
                return f"{short}: {rule}"
    cut = text[: limit - 3]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return (cut.rstrip(" ,;:") + "...")[:limit]


def _tag_of(subject: str) -> str:
    """``(gggg,eeee)`` for a keyword (or ``Keyword+Time``), or ``""``."""
    keyword = subject.split("+")[0]
    tag = tag_for_keyword(keyword)
    return "" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class QueryError(Exception):
    """An identifier that is not a valid worklist query.

    Attributes
    ----------
    message : str
        What is wrong: the attribute's keyword and the rule it breaks, never its value (the
        server logs it, and a value may be patient data).
    tags : tuple of int
        The offending elements.
    status : Status
        The failure status to answer with.
    """

    def __init__(
        self,
        message: str,
        tags: tuple[int, ...] = (),
        status: Status = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tags = tags
        self.status = status

    @property
    def comment(self) -> str:
        """The message, fitted to the 64 characters of an ErrorComment (:func:`fit_comment`)."""
        return fit_comment(self.message)


@dataclass(frozen=True)
class Mismatch:
    """One constraint an entry fails.

    Attributes
    ----------
    tags : tuple of int
        The attribute, or the date and time attributes of a combined date-time range.
    entry_values : tuple of str
        What the entry holds there (the date values, then the time values, for a range).
    """

    tags: tuple[int, ...]
    entry_values: tuple[str, ...]


@dataclass(frozen=True)
class ReturnKey:
    """A key of a query that holds a value but is a return key only (PS3.4 K.2.2.1.1.2).

    Attributes
    ----------
    path : tuple of int
        The sequence tags leading to the item that holds it (``()``: the top level).
    tag : int
        The key.
    """

    path: tuple[int, ...]
    tag: int


@dataclass(frozen=True)
class ItemQuery:
    """The constraints of one dataset level (the top level or a sequence item).

    Attributes
    ----------
    values : tuple
        ``(tag, matcher)`` for each constrained attribute.
    date_times : tuple
        ``(date tag, time tag, range)`` for each combined date-time constraint.
    sequences : tuple
        ``(tag, item query)`` for each sequence with constraints in its item (C.2.2.2.6).
    """

    values: tuple[tuple[int, Matcher], ...] = ()
    date_times: tuple[tuple[int, int, CombinedDateTime], ...] = ()
    sequences: tuple[tuple[int, ItemQuery], ...] = ()

    @property
    def is_universal(self) -> bool:
        """Whether every record matches."""
        return not (self.values or self.date_times or self.sequences)

    def matches(self, record: Record) -> bool:
        """Whether a record meets every constraint of this level."""
        for tag, matcher in self.values:
            if not matcher(record.text(tag)):
                return False
        for date_tag, time_tag, window in self.date_times:
            if not window.match(record.text(date_tag), record.text(time_tag)):
                return False
        for tag, item_query in self.sequences:
            if not any(item_query.matches(item) for item in record.items(tag)):
                return False
        return True

    def mismatches(self, record: Record) -> list[Mismatch]:
        """Every constraint of this level a record fails, by the same matchers as
        :meth:`matches` (which is true exactly when this is empty)."""
        out: list[Mismatch] = []
        for tag, matcher in self.values:
            if not matcher(record.text(tag)):
                out.append(Mismatch((tag,), record.text(tag)))
        for date_tag, time_tag, window in self.date_times:
            if not window.match(record.text(date_tag), record.text(time_tag)):
                out.append(
                    Mismatch((date_tag, time_tag), record.text(date_tag) + record.text(time_tag))
                )
        for tag, item_query in self.sequences:
            if not any(item_query.matches(item) for item in record.items(tag)):
                out.append(Mismatch((tag,), ()))
        return out

    def sequence(self, tag: int) -> ItemQuery | None:
        """The item query of a constrained sequence, if any."""
        return next((q for t, q in self.sequences if t == tag), None)


@dataclass(frozen=True)
class CompiledQuery:
    """A validated worklist query.

    Attributes
    ----------
    identifier : Dataset
        The request identifier: answers hold exactly its keys.
    top : ItemQuery
        Constraints on the entry's top level.
    sps : ItemQuery
        Constraints on the entry's Scheduled Procedure Step item.
    sps_keys : Dataset or None
        The SPS item keys to return (expanded when the request's item was empty), or ``None``
        when the request does not ask for the SPS sequence.
    return_only : tuple of ReturnKey
        The keys of the request that hold a value but are return keys only (not matching keys
        of ``matching``): they did not narrow the answers.
    matching : MatchingKeys
        Which keys were matched.
    """

    identifier: Dataset
    top: ItemQuery
    sps: ItemQuery
    sps_keys: Dataset | None
    return_only: tuple[ReturnKey, ...] = ()
    matching: MatchingKeys = DEFAULT_MATCHING

    def matches(self, entry: Entry) -> bool:
        """Whether an entry (one scheduled procedure step) matches the query."""
        return self.top.matches(entry.top) and self.sps.matches(entry.sps)


def _vr(elem: DataElement) -> str:
    try:
        return dictionary_VR(elem.tag) if not elem.tag.is_private else str(elem.VR)
    except KeyError:
        return str(elem.VR)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _is_ignored(tag: int, top: bool) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 or group == 0x0002:  # group lengths, file meta
        return True
    return top and tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL)


def _has_value(vr: str, text: str) -> bool:
    """Whether a query value would constrain (not zero-length, not ``*`` alone)."""
    stripped = text.strip(" \x00")
    return bool(stripped) and not (vr in WILDCARD_VRS and stripped.strip("*") == "")


def _holds_value(ds: Dataset) -> bool:
    """Whether a sequence item of a query holds a value anywhere (a key that would match)."""
    for elem in ds:
        if elem.VR == "SQ":
            if any(_holds_value(item) for item in elem.value or []):
                return True
        elif _has_value(_vr(elem), _text(elem.value)):
            return True
    return False


@dataclass
class _Compiling:
    """What one compilation needs at every level."""

    matching: MatchingKeys
    pn_fold: bool
    max_value_length: int | None
    return_only: list[ReturnKey]
    #: The identifier declares ISO 2022 code extensions (``ISO 2022 IR ...``): pydicom
    #: decodes an escape sequence it does not know as the characters themselves, with a
    #: warning; an ESC left in a decoded value is such a sequence (PS3.5 6.1.2.5.3).
    code_extensions: bool = False


def _compile_level(ds: Dataset, path: tuple[int, ...], job: _Compiling) -> ItemQuery:
    top = not path
    texts: dict[int, tuple[str, str]] = {}
    sequences: list[tuple[int, ItemQuery]] = []
    for elem in ds:
        tag = int(elem.tag)
        if _is_ignored(tag, top) or (top and tag == SPS_SEQUENCE_TAG):
            continue
        vr = _vr(elem)
        matched = job.matching.matches_on(tag, path)
        if vr == "SQ" or elem.VR == "SQ":
            items = list(elem.value or [])
            if len(items) > 1:
                raise QueryError(
                    f"{_keyword(tag)}: {len(items)} items; a query sequence holds one",
                    (tag,),
                )
            if items and not matched:
                if _holds_value(items[0]):
                    job.return_only.append(ReturnKey(path, tag))
            elif items:
                nested = _compile_level(items[0], (*path, tag), job)
                if not nested.is_universal:
                    sequences.append((tag, nested))
            continue
        text = _text(elem.value)
        if job.max_value_length is not None and len(text) > job.max_value_length:
            raise QueryError(
                f"{_keyword(tag)}: longer than {job.max_value_length} characters",
                (tag,),
                Status.UNABLE_TO_PROCESS,
            )
        if not matched:
            if _has_value(vr, text):
                job.return_only.append(ReturnKey(path, tag))
            continue
        if "\ufffd" in text:  # pydicom replaced bytes not valid in the character set
            raise QueryError(
                f"{_keyword(tag)}: not valid in the Specific Character Set",
                (tag,),
                Status.UNABLE_TO_PROCESS,
            )
        if job.code_extensions and "\x1b" in text:  # an escape sequence pydicom did not know
            raise QueryError(
                f"{_keyword(tag)}: escape sequence not of its Specific Character Set",
                (tag,),
                Status.UNABLE_TO_PROCESS,
            )
        texts[tag] = (vr, text)

    date_times: list[tuple[int, int, CombinedDateTime]] = []
    for date_tag, time_tag in COMBINED_DATE_TIME:
        if date_tag in texts and time_tag in texts:
            date_text, time_text = texts[date_tag][1], texts[time_tag][1]
            date_form, time_form = range_form(date_text), range_form(time_text)
            if (
                date_form is not None
                and time_form is not None
                and date_form in (time_form, "single")
            ):
                try:
                    window = combined_date_time(date_text, time_text)
                except QueryValueError as exc:
                    raise QueryError(
                        f"{_keyword(date_tag)}+Time: {exc}", (date_tag, time_tag)
                    ) from None
                date_times.append((date_tag, time_tag, window))
                del texts[date_tag], texts[time_tag]

    values: list[tuple[int, Matcher]] = []
    for tag, (vr, text) in texts.items():
        try:
            matcher = compile_value(vr, text, pn_fold=job.pn_fold)
        except QueryValueError as exc:
            raise QueryError(f"{_keyword(tag)}: {exc}", (tag,)) from None
        if matcher is not None:
            values.append((tag, matcher))
    return ItemQuery(tuple(values), tuple(date_times), tuple(sequences))


def _keyword(tag: int) -> str:
    """The keyword of a tag for error comments (OffendingElement carries the tag itself),
    so that the reason still fits the 64 characters of an ErrorComment."""
    return keyword_for_tag(tag) or describe_tag(tag)


def _guarded(ds: Dataset, action: Callable[[], ItemQuery]) -> ItemQuery:
    """Run a compile step, turning pydicom decoding failures into a failure status."""
    try:
        return action()
    except QueryError:
        raise
    except Exception as exc:  # a value pydicom cannot decode (bad VR, length, charset ...)
        raise QueryError(
            f"cannot decode the identifier ({type(exc).__name__})",
            (),
            Status.UNABLE_TO_PROCESS,
        ) from None


def compile_query(
    identifier: Dataset,
    *,
    pn_fold: bool = False,
    expand_empty_sps: bool = True,
    max_value_length: int | None = None,
    matching: MatchingKeys = DEFAULT_MATCHING,
) -> CompiledQuery:
    """Compile a C-FIND identifier of the Modality Worklist Information Model.

    Parameters
    ----------
    identifier : Dataset
        The decoded request identifier.
    pn_fold : bool
        Match PN values insensitive to case and accents.
    expand_empty_sps : bool
        An empty Scheduled Procedure Step item asks for all Table K.6-1 SPS keys (wlmscpfs's
        default; ``-nse`` turns it off).
    max_value_length : int or None
        Refuse a value longer than this many characters (status 0xC000): matching cost and
        memory grow with it, and no worklist attribute needs more (LO holds 64, LT 10240
        but is not a key anyone matches on).
    matching : MatchingKeys
        Which keys are matching keys (a modality profile's ``match-keys``); the others are
        return keys only (PS3.4 K.2.2.1.1.2).

    Raises
    ------
    QueryError
        The identifier is not a valid query; the error names the offending element.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> ds = Dataset()
    >>> ds.PatientID = "AB*"
    >>> q = compile_query(ds)
    >>> len(q.top.values), q.sps.is_universal
    (1, True)
    >>> ds.PregnancyStatus = 0  # an optional key wlmserver does not match by default
    >>> q = compile_query(ds)
    >>> len(q.top.values), [describe_tag(k.tag) for k in q.return_only]
    (1, ['PregnancyStatus (0010,21C0)'])
    """
    charset = identifier.get("SpecificCharacterSet", "")
    names = [charset] if isinstance(charset, str) else list(charset)
    for name in names:
        if name and name.strip() not in python_encoding:
            raise QueryError(f"unknown Specific Character Set {name!r}", (SPECIFIC_CHARACTER_SET,))

    extended = any(name and name.strip().startswith("ISO 2022") for name in names)
    job = _Compiling(matching, pn_fold, max_value_length, [], extended)
    top = _guarded(identifier, lambda: _compile_level(identifier, (), job))
    sps = ItemQuery()
    sps_keys: Dataset | None = None
    if SPS_SEQUENCE_TAG in identifier:
        items = list(identifier[SPS_SEQUENCE_TAG].value or [])
        if len(items) > 1:
            raise QueryError(
                f"{_keyword(SPS_SEQUENCE_TAG)}: {len(items)} items; a worklist query "
                "holds at most one",
                (SPS_SEQUENCE_TAG,),
            )
        item = items[0] if items else Dataset()
        sps = _guarded(item, lambda: _compile_level(item, (SPS_SEQUENCE_TAG,), job))
        sps_keys = item
        if len(item) == 0 and expand_empty_sps:
            sps_keys = Dataset()
            for tag in SPS_EXPANSION_TAGS:
                sps_keys.add(DataElement(tag, dictionary_VR(tag), None))
    return CompiledQuery(identifier, top, sps, sps_keys, tuple(job.return_only), matching)
