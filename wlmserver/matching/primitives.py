"""Matching primitives of PS3.4 C.2.2.2, on decoded text.

This module knows nothing of files, networks or pydicom datasets. A query value is compiled once
into a *matcher*, a callable that takes the values an entry holds for that attribute (a tuple of
decoded strings, one per value: ``AA32\\AA33`` in a file is ``("AA32", "AA33")``) and answers
whether the entry matches. Every matcher treats an entry with no value as not matching
(C.2.2.2: "an entity with no value for a constrained key does not match").

The matching types:

- universal matching (C.2.2.2.3): a zero-length value, or ``*`` alone (or any run of ``*``,
  which also matches every value, a zero-length one included) where wildcards are allowed;
  compiled to ``None`` (no constraint);
- single value matching (C.2.2.2.1), and list of UID matching (C.2.2.2.2) for ``UI``;
- wildcard matching (C.2.2.2.4) with ``*`` and ``?`` for the VRs in
  :data:`wlmserver.matching.keys.WILDCARD_VRS`, in linear time per pattern segment (:class:`Glob`:
  no regular expression, no backtracking, whatever the pattern);
- range matching (C.2.2.2.5) for ``DA``, ``TM`` and ``DT``, including the combined date-time
  range of C.2.2.2.5.1 (:func:`combined_date_time`).

A backslash-separated query value is a list of alternatives: any of them may match any of the
entry's values.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from wlmserver.matching.keys import NUMERIC_VRS, SINGLE_VALUED_TEXT_VRS, WILDCARD_VRS

Values = tuple[str, ...]
"""The decoded values an entry holds for one attribute."""

Matcher = Callable[[Values], bool]
"""A compiled query value: answers whether an entry's values match it."""


class QueryValueError(ValueError):
    """A query value that is not valid for its VR (the message says why)."""


# --------------------------------------------------------------------------- text folding
def fold_case_and_accents(text: str) -> str:
    """Fold case and strip accents, for case-insensitive PN matching (C.2.2.2.1).

    Examples
    --------
    >>> fold_case_and_accents("Müller^JÜRGEN")
    'muller^jurgen'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()


def _identity(text: str) -> str:
    return text


def pn_candidates(value: str) -> tuple[str, ...]:
    """Return the strings a PN value is matched by: the whole value and each component group.

    ``Yamada^Tarou=山田^太郎`` matches a query for ``Yamada^Tarou`` and one for ``山田^太郎``.
    """
    if "=" not in value:
        return (value,)
    groups = tuple(g for g in value.split("=") if g)
    return (value, *groups)


# --------------------------------------------------------------------------- date and time
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def _check_date(text: str) -> str:
    m = _DA.match(text)
    if not m:
        raise QueryValueError("not a date: use YYYYMMDD")
    try:
        date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise QueryValueError("not a calendar date (YYYYMMDD)") from None
    return text


def _time_bounds(text: str) -> tuple[str, str]:
    """Return the first and last instant a (possibly partial) TM value stands for.

    Instants are 12-digit strings ``HHMMSSffffff`` that compare in time order.
    """
    value = text.replace(":", "")  # ACR-NEMA style 10:15:00 is still seen in files
    m = _TM.match(value)
    if not m:
        raise QueryValueError("not a time: use HHMM, HHMMSS or HHMMSS.FFFFFF")
    hh, mm, ss, frac = m[1], m[2], m[3], m[4]
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise QueryValueError("not a valid time (HH<24, MM<60, SS<61)")
    if frac is not None and ss is None:
        raise QueryValueError("a fraction needs seconds: HHMMSS.FFFFFF")
    lo = hh + (mm or "00") + (ss or "00") + (frac or "").ljust(6, "0")
    hi = hh + (mm or "59") + (ss or "59") + (frac or "").ljust(6, "9")
    return lo, hi


def _datetime_bounds(text: str) -> tuple[str, str]:
    """Return the first and last instant a (possibly partial) DT value stands for.

    Instants are 20-digit strings ``YYYYMMDDHHMMSSffffff``. A UTC offset is accepted and not
    applied: worklist date-times are compared as local times.
    """
    m = _DT.match(text)
    if not m:
        raise QueryValueError("not a date-time: use YYYYMMDDHHMMSS")
    year, month, day, hh, mm, ss, frac = (m[i] for i in range(1, 8))
    if month and day:
        _check_date(year + month + day)
    elif month and not 1 <= int(month) <= 12:
        raise QueryValueError("not a valid month (01-12)")
    if hh:
        _time_bounds(hh + (mm or "") + (ss or "") + (f".{frac}" if frac else ""))
    lo = year + (month or "01") + (day or "01") + (hh or "00") + (mm or "00") + (ss or "00")
    hi = year + (month or "12") + (day or "31") + (hh or "23") + (mm or "59") + (ss or "59")
    return lo + (frac or "").ljust(6, "0"), hi + (frac or "").ljust(6, "9")


def _date_bounds(text: str) -> tuple[str, str]:
    _check_date(text)
    return text, text


_RANGE_FORMS = {
    "DA": "use YYYYMMDD or a range YYYYMMDD-YYYYMMDD",
    "TM": "use HHMM[SS] or a range HHMM-HHMM",
    "DT": "use YYYYMMDDHHMM[SS] or a range of two",
}

_BOUNDS: dict[str, Callable[[str], tuple[str, str]]] = {
    "DA": _date_bounds,
    "TM": _time_bounds,
    "DT": _datetime_bounds,
}


def _entry_instant(vr: str, value: str) -> str | None:
    """The instant an entry's DA/TM/DT value is compared by (its first instant), or None."""
    try:
        return _BOUNDS[vr](value.strip())[0]
    except QueryValueError:
        return None


@dataclass(frozen=True)
class Range:
    """Range matching (C.2.2.2.5): ``lo <= value <= hi``, either end open (``None``).

    A time range whose start is after its end (``2200-0600``) crosses midnight: it matches
    a time at or after its start, or at or before its end.
    """

    vr: str
    lo: str | None
    hi: str | None

    @property
    def crosses_midnight(self) -> bool:
        """Whether this is a time range from one evening to the next morning."""
        return self.lo is not None and self.hi is not None and self.lo > self.hi

    def __call__(self, values: Values) -> bool:
        lo, hi = self.lo, self.hi
        wraps = self.crosses_midnight
        for value in values:
            instant = _entry_instant(self.vr, value)
            if instant is None:
                continue
            after_lo = lo is None or instant >= lo
            before_hi = hi is None or instant <= hi
            if (after_lo or before_hi) if wraps else (after_lo and before_hi):
                return True
        return False


def parse_range(vr: str, text: str) -> tuple[str | None, str | None]:
    """Parse a DA/TM/DT query value (single value or range) into its first and last instant.

    A single value stands for the whole span of its precision: ``TM 10`` is 10:00:00.000000 to
    10:59:59.999999. ``-`` alone, more than one ``-`` (other than a DT offset) and a DA or DT
    range whose start is after its end are errors. A TM range whose start is after its end
    crosses midnight (``2200-0600``) and is returned as it is, ``lo > hi``
    (see :class:`Range` and :func:`combined_date_time`).

    Examples
    --------
    >>> parse_range("DA", "20261122-")
    ('20261122', None)
    >>> parse_range("TM", "1015-1030")
    ('101500000000', '103059999999')
    >>> parse_range("TM", "2200-0600")
    ('220000000000', '060059999999')
    """
    bounds = _BOUNDS[vr]
    text = text.strip()
    parts = _split_dt_range(text) if vr == "DT" else text.split("-")
    if len(parts) == 1:
        return bounds(parts[0])
    if len(parts) != 2 or (not parts[0] and not parts[1]):
        raise QueryValueError(_RANGE_FORMS[vr])
    lo = bounds(parts[0].strip())[0] if parts[0].strip() else None
    hi = bounds(parts[1].strip())[1] if parts[1].strip() else None
    if lo is not None and hi is not None and lo > hi and vr != "TM":
        raise QueryValueError("the range starts after it ends")
    return lo, hi


def _split_dt_range(text: str) -> list[str]:
    """Split a DT range on its range hyphen, not on the hyphen of a negative UTC offset."""
    # A DT value is digits, '.', and an optional '+ZZXX'/'-ZZXX' suffix of exactly 4 digits.
    # The range hyphen is the one whose right side starts a new date-time (4+ digits then a
    # digit or the end) or is empty, and whose left side is empty or a complete value.
    for i, char in enumerate(text):
        if char != "-":
            continue
        left, right = text[:i], text[i + 1 :]
        left_ok = left == "" or _DT.match(left) is not None
        right_ok = right == "" or _DT.match(right) is not None
        if left_ok and right_ok and not (left and re.fullmatch(r"\d{4}", right) and len(left) > 8):
            return [left, right]
    return [text]


# --------------------------------------------------------------------------- value matchers
@dataclass(frozen=True)
class AnyOf:
    """Single value matching (and list of UID matching): any alternative equals any value."""

    alternatives: frozenset[str]
    fold: Callable[[str], str] = _identity
    person_name: bool = False

    def __call__(self, values: Values) -> bool:
        for value in values:
            candidates = pn_candidates(value) if self.person_name else (value,)
            if any(self.fold(c) in self.alternatives for c in candidates):
                return True
        return False


def _find(segment: str, text: str, start: int, end: int) -> int:
    """The first position ``>= start`` where ``segment`` (``?`` standing for any one character)
    lies wholly before ``end`` in ``text``, or -1.

    Every wildcard comparison goes through here, so a test can count the work it does.
    """
    if "?" not in segment:
        return text.find(segment, start, end)
    found = _segment_regex(segment).search(text, start, end)
    return -1 if found is None else found.start()


@lru_cache(maxsize=1024)
def _segment_regex(segment: str) -> re.Pattern[str]:
    # a fixed-length pattern (no quantifier, no alternation): the regular expression engine
    # tries each start position once, comparing at most len(segment) characters
    return re.compile("".join("." if c == "?" else re.escape(c) for c in segment), re.DOTALL)


@dataclass(frozen=True)
class Glob:
    """One wildcard pattern (C.2.2.2.4), matched in time linear in the value for each segment.

    The pattern is cut at its ``*`` into literal segments (``?`` stands for any one
    character inside a segment). The first segment must start the value, the last must end it,
    and each segment between them is found at its leftmost place after the previous one: the
    leftmost place never loses a match, so nothing is ever tried twice (no backtracking,
    however many ``*`` the pattern holds).

    Examples
    --------
    >>> g = Glob.compile("*A*B?")
    >>> g.match("xxAyyBz"), g.match("xxBAz")
    (True, False)
    >>> Glob.compile("***************Z").segments
    ('', 'Z')
    """

    segments: tuple[str, ...]
    """The literal segments between stars (runs of ``*`` collapsed); one segment: no ``*``."""
    min_length: int

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        """Cut a pattern into segments (runs of ``*`` count as one)."""
        parts = pattern.split("*")
        # inner empty segments come from runs of stars: they constrain nothing
        segments = (
            (parts[0], *(p for p in parts[1:-1] if p), parts[-1]) if len(parts) > 1 else (parts[0],)
        )
        return cls(segments, sum(len(p) for p in segments))

    def match(self, text: str) -> bool:
        """Whether the whole of ``text`` matches the pattern."""
        segments = self.segments
        if len(text) < self.min_length:
            return False
        if len(segments) == 1:
            return len(text) == self.min_length and _find(segments[0], text, 0, len(text)) == 0
        first, last = segments[0], segments[-1]
        if first and _find(first, text, 0, len(first)) != 0:
            return False
        end = len(text) - len(last)
        if last and _find(last, text, end, len(text)) != end:
            return False
        position = len(first)
        for segment in segments[1:-1]:
            found = _find(segment, text, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True

    @property
    def matches_empty(self) -> bool:
        """Whether the pattern is made only of ``*`` (it then matches any value, even none)."""
        return self.min_length == 0 and len(self.segments) > 1


@dataclass(frozen=True)
class Wildcard:
    """Wildcard matching (C.2.2.2.4): ``*`` is any sequence of characters, ``?`` any one.

    Each alternative is a :class:`Glob`: the cost is linear in the value for each segment of
    the pattern, whatever the pattern (``***************Z`` costs what ``*Z`` costs).
    """

    globs: tuple[Glob, ...]
    fold: Callable[[str], str] = _identity
    person_name: bool = False
    alternatives: tuple[str, ...] = ()

    def __call__(self, values: Values) -> bool:
        for value in values:
            candidates = pn_candidates(value) if self.person_name else (value,)
            for candidate in candidates:
                folded = self.fold(candidate)
                if any(glob.match(folded) for glob in self.globs):
                    return True
        return False


@dataclass(frozen=True)
class Numeric:
    """Single value matching on numbers: ``1.50`` equals ``1.5``."""

    alternatives: frozenset[float]

    def __call__(self, values: Values) -> bool:
        for value in values:
            try:
                if float(value) in self.alternatives:
                    return True
            except ValueError:
                continue
        return False


@dataclass(frozen=True)
class AnyMatcher:
    """Any of several matchers (a backslash list mixing wildcards and ranges)."""

    matchers: tuple[Matcher, ...]

    def __call__(self, values: Values) -> bool:
        return any(m(values) for m in self.matchers)


#: A CS value (PS3.5 Table 6.2-1: upper case letters, digits, space, underscore), with the
#: wildcards of C.2.2.2.4. wlmscpfs refuses others too (``Modality=us``).
_CODE_STRING = re.compile(r"[A-Z0-9 _*?]*")


def split_query_value(vr: str, text: str) -> list[str]:
    """Split a query value into its backslash-separated alternatives (not for LT/ST/UT/UR)."""
    if vr in SINGLE_VALUED_TEXT_VRS:
        return [text]
    return text.split("\\")


def normalise_text(vr: str, text: str) -> str:
    """Remove the padding a VR does not count as significant (PS3.5 6.2).

    Trailing spaces never count; leading spaces count only for the text VRs SH, LO, ST, LT, UC
    and UT.
    """
    if vr in {"SH", "LO", "ST", "LT", "UC", "UT"}:
        return text.rstrip(" ")
    return text.strip(" ")


def compile_value(vr: str, text: str, *, pn_fold: bool = False) -> Matcher | None:
    """Compile one query value for an attribute of the given VR.

    Parameters
    ----------
    vr : str
        The attribute's value representation.
    text : str
        The decoded query value, with backslashes between alternatives.
    pn_fold : bool
        Match PN values insensitive to case and accents.

    Returns
    -------
    Matcher or None
        ``None`` for universal matching (no constraint).

    Raises
    ------
    QueryValueError
        The value is not valid for the VR (a bad date, a wildcard in a UID ...).

    Examples
    --------
    >>> m = compile_value("AE", "CT*")
    >>> m(("CT01",)), m(("MR01",))
    (True, False)
    >>> compile_value("PN", "") is None
    True
    """
    if text.strip(" \x00") == "":
        return None
    alternatives = [normalise_text(vr, a) for a in split_query_value(vr, text)]
    if vr in _BOUNDS:
        ranges = tuple(Range(vr, *parse_range(vr, a)) for a in alternatives if a)
        return ranges[0] if len(ranges) == 1 else AnyMatcher(ranges)
    if vr == "CS" and not all(_CODE_STRING.fullmatch(a) for a in alternatives):
        raise QueryValueError("not a code string: use A-Z, 0-9, space and _")
    if vr in WILDCARD_VRS:
        if any(a and a.strip("*") == "" for a in alternatives):
            return None  # '*', '**', ...: any value, a zero-length one and none at all
        fold = fold_case_and_accents if (pn_fold and vr == "PN") else _identity
        alternatives = [fold(a) for a in alternatives]
        person = vr == "PN"
        if any("*" in a or "?" in a for a in alternatives):
            globs = tuple(Glob.compile(a) for a in alternatives)
            return Wildcard(globs, fold, person, tuple(alternatives))
        return AnyOf(frozenset(alternatives), fold, person)
    if vr in NUMERIC_VRS:
        try:
            return Numeric(frozenset(float(a) for a in alternatives))
        except ValueError:
            raise QueryValueError("not a number") from None
    if vr == "UI":
        for a in alternatives:
            if not re.fullmatch(r"[0-9.]+", a):
                raise QueryValueError("not a UID list (digits and dots, no wildcards)")
    return AnyOf(frozenset(alternatives))


def range_form(text: str) -> str | None:
    r"""The form of range matching of a DA or TM query value, for C.2.2.2.5.4: ``"single"``,
    ``"a-b"``, ``"-b"`` or ``"a-"``; None for a universal value or a list.

    A date and a time are combined into one date-time range when both have the same form, or
    the date is a single day: ``20231231-20240101`` with ``2200-0600`` is one range from the
    evening of the first day to the morning of the second, and ``20231231`` with ``2200-0600``
    the night that starts that day (see :func:`combined_date_time`); ``20231226-20231230``
    with ``2115`` is matched as two keys (those days, at 21:15), as are open ends of different
    forms.

    Examples
    --------
    >>> [range_form(t) for t in ("20231231", "20231231-20240101", "-1300", "2200-", "", "1\\2")]
    ['single', 'a-b', '-b', 'a-', None, None]
    """
    text = text.strip(" \x00")
    if not text or "\\" in text:
        return None
    if "-" not in text:
        return "single"
    start, _, end = text.partition("-")
    return "a-b" if start.strip() and end.strip() else "-b" if end.strip() else "a-"


@dataclass(frozen=True)
class CombinedDateTime:
    """Combined date-time range matching (C.2.2.2.5.1) over a date and a time attribute.

    Matches when the instant formed by the entry's date and time lies in ``[lo, hi]``.
    """

    lo: str | None
    hi: str | None

    def match(self, dates: Values, times: Values) -> bool:
        for d in dates:
            day = _entry_instant("DA", d)
            if day is None:
                continue
            for t in times:
                instant_time = _entry_instant("TM", t)
                if instant_time is None:
                    continue
                instant = day[:8] + instant_time
                if (self.lo is None or instant >= self.lo) and (
                    self.hi is None or instant <= self.hi
                ):
                    return True
        return False


def combined_date_time(date_text: str, time_text: str) -> CombinedDateTime:
    """Compile a query's date and time values (both non-universal) into one date-time range.

    ``20061001-20061005`` with ``1000-1800`` is 1 October 10:00 to 5 October 18:00;
    ``20061001`` with ``1000-1800`` is 1 October from 10:00 to 18:00; an open time end is the
    start or end of its day (C.2.2.2.5.1).

    The query compiler combines a date and a time when both have the same form of range
    matching (C.2.2.2.5.4), or the date is a single day (:func:`range_form`). Two ranges are
    matched as the one date-time range their ends make, "as if they were a single Attribute of
    VR DT" (C.2.2.2.5.4): with the dates ``20231231-20240101``, the times ``2200-0600`` run
    from 31 December 22:00 to 1 January 06:00. A range stays a range: ``20231231-20231231``
    with ``2200-0600`` would run from 22:00 back to 06:00 of the same day, a date-time range
    that ends before it starts (C.2.2.2.5.3 defines none; C.2.2.2.5.2: "range matching
    crossing midnight is not supported"), so it is refused, as a reversed date range is.
    Only a *single* date with a time range that crosses midnight is read otherwise, as the
    night that starts on that day (wlmserver's documented reading of a query the standard does
    not define).

    Raises
    ------
    QueryValueError
        Either value is invalid, or is a list of alternatives (not defined for combined ranges),
        or the date-time range starts after it ends (``20231231-20231231`` with ``2200-0600``).

    Examples
    --------
    >>> r = combined_date_time("20061001-20061005", "1000-1800")
    >>> r.lo, r.hi
    ('20061001100000000000', '20061005180059999999')
    >>> r = combined_date_time("20231231", "2200-0600")
    >>> r.lo, r.hi
    ('20231231220000000000', '20240101060059999999')
    >>> try:
    ...     combined_date_time("20231231-20231231", "2200-0600")
    ... except QueryValueError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    the date-time range starts after it ends (a time range across midnight needs a single ...
    """
    if "\\" in date_text or "\\" in time_text:
        raise QueryValueError("no value lists in a combined date-time range")
    dlo, dhi = parse_range("DA", date_text)
    tlo, thi = parse_range("TM", time_text)
    single_day = range_form(date_text) == "single"
    if single_day and dlo is not None and tlo is not None and thi is not None and tlo > thi:
        dhi = (date(int(dlo[:4]), int(dlo[4:6]), int(dlo[6:8])) + timedelta(days=1)).strftime(
            "%Y%m%d"
        )
    lo = None if dlo is None else dlo + (tlo or "000000000000")
    hi = None if dhi is None else dhi + (thi or "235959999999")
    if lo is not None and hi is not None and lo > hi:
        if tlo is not None and thi is not None and tlo > thi:  # what to type instead
            raise QueryValueError(
                "the date-time range starts after it ends (a time range across midnight "
                "needs a single date, the night that starts that day, or a range of two days)"
            )
        raise QueryValueError("the date-time range starts after it ends")
    return CombinedDateTime(lo, hi)


def sortable_instant(dates: Values, times: Values) -> str:
    """The instant an entry is ordered by: its first date and time, or ``""`` if it has none."""
    day = next((d for d in (_entry_instant("DA", v) for v in dates) if d), "")
    tim = next((t for t in (_entry_instant("TM", v) for v in times) if t), "")
    return day + tim if day else ""
