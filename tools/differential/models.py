"""Models of matching: the reference of how wlmserver is documented to match, a
model of how wlmscpfs matches, and combined date-time ranges."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.charset import convert_encodings, encode_string
from pydicom.valuerep import PersonName

from .intended import (
    NUMERIC_VRS,
    SCPFS_LITERAL,
    SCPFS_MATCHED,
    SINGLE_VALUED_TEXT_VRS,
    TEXT_VRS,
    WILDCARD_VRS,
)
from .queries import Constraint


def alternatives_of(vr: str, value: str) -> list[str]:
    alternatives = [value] if vr in SINGLE_VALUED_TEXT_VRS else value.split("\\")
    return [a.rstrip(" ") if vr in TEXT_VRS else a.strip(" ") for a in alternatives]


def _star_only(alternative: str) -> bool:
    return alternative != "" and set(alternative) == {"*"}


def _pattern(alternative: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in alternative)
    return re.compile(body, re.S)


def reference_verdict(
    c: Constraint, values: Sequence[str], *, groups: bool = True, wildcards: bool = True
) -> bool:
    """Whether values match a constraint as wlmserver is documented to match them
    (docs/querying.md, "Matching and answers"; PS3.4 C.2.2.2), on decoded text.

    A zero-length value and a star-only value are universal (also for an entry without a
    value); otherwise an entry without a value does not match. Alternatives are separated by
    backslashes; a multi-valued entry matches if any value does; a person name also matches by
    any ``=`` component group (unless ``groups`` is false); wildcards on the VRs C.2.2.2.4
    allows (unless ``wildcards`` is false: then ``*`` and ``?`` are characters); numbers by
    value. Not for DA, TM and DT (see :func:`datetime_verdict`).
    """
    alternatives = alternatives_of(c.vr, c.value)
    if not c.value.strip(" ") or any(_star_only(a) for a in alternatives):
        return True
    candidates = list(values)
    if c.vr == "PN" and groups:
        candidates += [g for v in values if "=" in v for g in v.split("=") if g]
    for alternative in alternatives:
        if c.vr in NUMERIC_VRS:
            try:
                if any(float(v) == float(alternative) for v in candidates):
                    return True
            except ValueError:
                continue
        elif wildcards and c.vr in WILDCARD_VRS and ("*" in alternative or "?" in alternative):
            pattern = _pattern(alternative)
            if any(pattern.fullmatch(v) for v in candidates):
                return True
        elif alternative in candidates:
            return True
    return False


def _encode(vr: str, text: str, charset: str | None) -> bytes:
    names = [] if charset is None else charset.split("\\")
    encodings = convert_encodings(names or ["ISO_IR 6"])
    if vr == "PN":
        return PersonName(text).encode(encodings)
    if vr in TEXT_VRS:
        return encode_string(text, encodings)
    return text.encode("ascii", "replace")


def scpfs_verdict(
    c: Constraint, values: Sequence[str], query_cs: str | None, answer_cs: str | None
) -> bool:
    """Whether values match a constraint the way wlmscpfs 3.6.7 matches text: keys it does not
    match on always do; star-only is universal; otherwise bytes (the query's encoding against
    the file's) compared whole, ``?`` standing for one byte; ``*`` and ``?`` literal on the
    keys of :data:`SCPFS_LITERAL`; alternatives and multi-valued entries as wlmserver."""
    if c.path not in SCPFS_MATCHED:
        return True
    alternatives = alternatives_of(c.vr, c.value)
    if not c.value.strip(" ") or any(_star_only(a) for a in alternatives):
        return True
    literal = c.path in SCPFS_LITERAL
    have = [_encode(c.vr, v, answer_cs) for v in values]
    for alternative in (_encode(c.vr, a, query_cs) for a in alternatives):
        if literal or not (b"*" in alternative or b"?" in alternative):
            if alternative in have:
                return True
            continue
        body = b"".join(
            b".*" if c == 0x2A else b"." if c == 0x3F else re.escape(bytes([c]))
            for c in alternative
        )
        pattern = re.compile(body, re.S)
        if any(pattern.fullmatch(v) for v in have):
            return True
    return False


@dataclass(frozen=True)
class Span:
    """A DA or TM query value: its form (``S`` single, ``R`` range ``a-b``, ``E`` open end
    ``a-``, ``B`` open start ``-b``) and its ends as written."""

    form: str
    lo: str | None
    hi: str | None


def span(text: str) -> Span | None:
    """The span of a DA or TM query value; None when universal."""
    text = text.strip()
    if not text or text == "-":
        return None
    if "-" not in text:
        return Span("S", text, text)
    lo, _, hi = text.partition("-")
    if lo and hi:
        return Span("R", lo, hi)
    return Span("E", lo, None) if lo else Span("B", None, hi)


def tm_start(text: str) -> str:
    """A TM value as the 12-digit instant ``HHMMSSffffff`` it starts at."""
    main, _, fraction = text.replace(":", "").partition(".")
    return main.ljust(6, "0")[:6] + fraction.ljust(6, "0")[:6]


def tm_end(text: str, precision: bool) -> str:
    """The last instant a TM value stands for: with ``precision``, the whole span of its
    precision (``10`` is 10:59:59.999999), else the instant it starts at."""
    if not precision:
        return tm_start(text)
    main, _, fraction = text.replace(":", "").partition(".")
    main = main + "5959"[len(main) - 2 :] if len(main) < 6 else main
    return main[:6] + (fraction.ljust(6, "9")[:6] if fraction else "999999")


def _next_day(day: str) -> str:
    following = date(int(day[:4]), int(day[4:6]), int(day[6:8])) + timedelta(days=1)
    return following.strftime("%Y%m%d")


def _in_dates(d: Span, day: str) -> bool:
    return (d.lo is None or day >= d.lo) and (d.hi is None or day <= d.hi)


def datetime_verdict(
    d: Span | None,
    t: Span | None,
    day: str,
    time_: str,
    *,
    precision: bool,
    night: bool,
    standard_forms: bool,
) -> bool:
    """Whether an entry's SPS start date and time match the query's date and time.

    With all three options false, as wlmscpfs 3.6.7 does (measured): the date and time form one
    combined date-time range only when they have the same form (both ranges, both open ends,
    both open starts; or a date range with an open time), with a closed date range and an open
    time end ending at 00:00 of its last day; otherwise each is matched on its own; a time is
    the instant it starts at; a time range that ends before it starts matches nothing. The
    options switch on, one by one, what wlmserver documents: ``precision``, a time covers its
    precision (``10`` is 10:00 to 10:59:59); ``night``, a time range that ends before it starts
    crosses midnight (with a single date, the night from that day; with no date, late or
    early; with a date range, one date-time range, refused when it ends before it starts);
    ``standard_forms``, date and time form one combined range when both have the same form
    or the date is a single day (C.2.2.2.5.4), the range running to the end of its last day.
    """
    instant_time = tm_start(time_)
    if t is None:
        return d is None or _in_dates(d, day)
    t_lo = None if t.lo is None else tm_start(t.lo)
    t_hi = None if t.hi is None else tm_end(t.hi, precision)
    crosses = t_lo is not None and t_hi is not None and t_lo > t_hi
    if standard_forms:
        combined = d is not None and (d.form == "S" or d.form == t.form)
    else:
        combined = d is not None and (
            d.form == "S"
            or (d.form == t.form and d.form in "REB")
            or (d.form == "R" and t.form in "EB")
        )
    if d is None or not combined:
        if crosses:
            time_ok = night and (instant_time >= t_lo or instant_time <= t_hi)  # type: ignore[operator]
        else:
            time_ok = (t_lo is None or instant_time >= t_lo) and (
                t_hi is None or instant_time <= t_hi
            )
        return time_ok and (d is None or _in_dates(d, day))
    d_lo, d_hi = d.lo, d.hi
    if night and crosses and d.form == "S" and d_lo is not None:
        d_hi = _next_day(d_lo)  # a single date: the night that starts on it
    open_time_end = "000000000000" if not standard_forms and d.form == "R" else "235959999999"
    lo = None if d_lo is None else d_lo + (t_lo or "000000000000")
    hi = None if d_hi is None else d_hi + (t_hi or open_time_end)
    instant = day + instant_time
    return (lo is None or instant >= lo) and (hi is None or instant <= hi)
