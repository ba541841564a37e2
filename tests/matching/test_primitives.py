"""PS3.4 C.2.2.2 matching primitives, as data tables."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wlmserver.matching import primitives as matching
from wlmserver.matching.primitives import (
    Glob,
    QueryValueError,
    Wildcard,
    combined_date_time,
    compile_value,
    fold_case_and_accents,
    parse_range,
    sortable_instant,
)

# (vr, query value, entry values, expected)
MATCHES = [
    # universal matching (C.2.2.2.3)
    ("PN", "", (), None),
    ("AE", "*", ("CT01",), None),
    ("LT", "*", (), None),
    # a value made only of '*' matches anything, a zero-length or absent value too (C.2.2.2.4)
    ("SH", "**", (), None),
    ("PN", "***", (), None),
    ("LO", "ABC\\**", (), None),
    # a pattern that needs a character does not match a value that has none
    ("SH", "*?", (), False),
    ("SH", "*?*", ("",), False),
    # single value matching (C.2.2.2.1), case-sensitive
    ("CS", "CT", ("CT",), True),
    ("CS", "CT", ("MR",), False),
    ("LO", "PID001", ("PID001",), True),
    ("LO", "PID001", ("PID0011",), False),
    ("PN", "DOE^JANE", ("DOE^JANE",), True),
    ("PN", "DOE^JANE", ("Doe^Jane",), False),
    ("PN", "DOE", ("DOE^JANE",), False),
    # no value in the entry never matches a constrained key
    ("CS", "CT", (), False),
    ("PN", "DOE*", (), False),
    ("DA", "20261122", (), False),
    # multi-valued entry values: any value matches
    ("AE", "AA33", ("AA32", "AA33"), True),
    ("AE", "AA34", ("AA32", "AA33"), False),
    # backslash alternatives in the query: any alternative
    ("CS", "CT\\MR", ("MR",), True),
    ("CS", "CT\\MR", ("US",), False),
    ("AE", "CT*\\MR01", ("MR01",), True),
    # wildcards (C.2.2.2.4)
    ("PN", "DOE*", ("DOE^JANE",), True),
    ("PN", "*JANE", ("DOE^JANE",), True),
    ("PN", "D?E^JANE", ("DOE^JANE",), True),
    ("PN", "D?E^JANE", ("DOOE^JANE",), False),
    ("PN", "*OE*AN*", ("DOE^JANE",), True),
    ("PN", "*OE*AN", ("DOE^JANE",), False),
    ("PN", "D*E", ("DOE^JANE",), True),
    ("PN", "D*E*E", ("DOE",), False),  # segments may not overlap
    ("PN", "*E*E", ("DOE^JANE",), True),
    ("PN", "***************Z", ("A" * 60,), False),
    ("PN", "***************Z", ("A" * 60 + "Z",), True),
    ("SH", "a*?*b", ("ab",), False),
    ("SH", "a*?*b", ("axb",), True),
    ("SH", "??", ("ab",), True),
    ("SH", "??", ("abc",), False),
    ("SH", "*a?c*", ("xxabbabcyy",), True),
    ("AE", "CT?1", ("CT01",), True),
    ("SH", "A.B*", ("AXB1",), False),  # regex characters are literal
    ("SH", "A.B*", ("A.B1",), True),
    ("LO", "a*", ("A1",), False),
    # PN component groups: each group can match on its own
    ("PN", "山田^太郎", ("Yamada^Tarou=山田^太郎=やまだ^たろう",), True),
    ("PN", "Yamada*", ("Yamada^Tarou=山田^太郎",), True),
    # UID list matching (C.2.2.2.2)
    ("UI", "1.2.3\\1.2.4", ("1.2.4",), True),
    ("UI", "1.2.3", ("1.2.30",), False),
    # numbers compare by value
    ("DS", "1.5", ("1.50",), True),
    ("IS", "7", ("8",), False),
    # LT is single-valued: a backslash is a character
    ("LT", "a\\b", ("a\\b",), True),
    # date ranges (C.2.2.2.5)
    ("DA", "20261122", ("20261122",), True),
    ("DA", "20261122", ("20261123",), False),
    ("DA", "20261120-20261122", ("20261121",), True),
    ("DA", "20261120-20261122", ("20261122",), True),
    ("DA", "20261120-20261122", ("20261123",), False),
    ("DA", "-20261122", ("19000101",), True),
    ("DA", "20261122-", ("20991231",), True),
    ("DA", "20261122-", ("20261121",), False),
    # time ranges, partial times and fractions
    ("TM", "10-11", ("103000",), True),
    ("TM", "10-11", ("115959.999",), True),
    ("TM", "10-11", ("120000",), False),
    ("TM", "1015-1030", ("101500",), True),
    ("TM", "1015-1030", ("103059",), True),
    ("TM", "1015-1030", ("1031",), False),
    ("TM", "120000-", ("160700",), True),
    ("TM", "120000-", ("085607",), False),
    ("TM", "-0900", ("085607",), True),
    ("TM", "101500.5-101500.6", ("101500.55",), True),
    ("TM", "101500.5-101500.6", ("101500.7",), False),
    ("TM", "10", ("1045",), True),  # a single partial time covers its precision
    ("TM", "1000-1100", ("10:30:00",), True),  # ACR-NEMA style values in files
    # a time range whose start is after its end crosses midnight (the night shift)
    ("TM", "2200-0600", ("2330",), True),
    ("TM", "2200-0600", ("0545",), True),
    ("TM", "2200-0600", ("060059",), True),
    ("TM", "2200-0600", ("0601",), False),
    ("TM", "2200-0600", ("1200",), False),
    ("TM", "2200-0600", ("2159",), False),
    # date-time ranges
    ("DT", "20261122-20261123", ("20261122235959",), True),
    ("DT", "20261122101500-", ("20261122101459",), False),
    ("DT", "2026-2027", ("20270615",), True),
    ("DT", "20261122101500-0500", ("20261122101500",), True),  # a UTC offset, not a range
]


@pytest.mark.parametrize(("vr", "query", "values", "expected"), MATCHES)
def test_matching_table(
    vr: str, query: str, values: tuple[str, ...], expected: bool | None
) -> None:
    matcher = compile_value(vr, query)
    if expected is None:
        assert matcher is None  # universal: no constraint at all
    else:
        assert matcher is not None
        assert matcher(values) is expected


@pytest.mark.parametrize(
    ("query", "value", "expected"),
    [
        ("müller^jürgen", "MÜLLER^JÜRGEN", True),
        ("MULLER*", "Müller^Jürgen", True),
        ("muller^jurgen", "Mueller^Juergen", False),
    ],
)
def test_pn_case_and_accent_insensitive_option(query: str, value: str, expected: bool) -> None:
    strict = compile_value("PN", query)
    folded = compile_value("PN", query, pn_fold=True)
    assert strict is not None and folded is not None
    assert strict((value,)) is False
    assert folded((value,)) is expected


def test_fold_is_only_for_person_names() -> None:
    matcher = compile_value("LO", "abc", pn_fold=True)
    assert matcher is not None and matcher(("ABC",)) is False


INVALID = [
    ("CS", "ct"),  # a code string is upper case (as wlmscpfs, which refuses it too)
    ("DA", "2026-11-22"),
    ("DA", "20261322"),
    ("DA", "20260230"),
    ("DA", "2026112"),
    ("DA", "20261123-20261122"),  # starts after it ends
    ("DA", "20261120-20261121-20261122"),
    ("DA", "-"),
    ("DA", "*"),
    ("TM", "25"),
    ("TM", "1060"),
    ("TM", "10.5"),
    ("TM", "abc"),
    ("DT", "2026112210x"),
    ("UI", "1.2.*"),
    ("IS", "seven"),
]


@pytest.mark.parametrize(("vr", "query"), INVALID)
def test_invalid_values_raise(vr: str, query: str) -> None:
    with pytest.raises(QueryValueError):
        compile_value(vr, query)


COMBINED = [
    # (date query, time query, entry date, entry time, expected) -- C.2.2.2.5.1
    ("20061001-20061005", "1000-1800", "20061001", "100000", True),
    ("20061001-20061005", "1000-1800", "20061001", "095959", False),
    ("20061001-20061005", "1000-1800", "20061003", "020000", True),  # a day in between
    ("20061001-20061005", "1000-1800", "20061005", "180059", True),
    ("20061001-20061005", "1000-1800", "20061005", "181000", False),
    ("20061001", "1000-1800", "20061001", "120000", True),
    ("20061001", "1000-1800", "20061001", "190000", False),
    ("20061001", "1000-1800", "20061002", "120000", False),
    ("20061001-", "1000-", "20061001", "0900", False),
    ("20061001-", "1000-", "20300101", "0900", True),
    ("-20061001", "-1000", "20061001", "1001", False),
    ("20061001", "10", "20061001", "1059", True),
]


@pytest.mark.parametrize(("dq", "tq", "date", "time", "expected"), COMBINED)
def test_combined_date_time(dq: str, tq: str, date: str, time: str, expected: bool) -> None:
    assert combined_date_time(dq, tq).match((date,), (time,)) is expected


def test_combined_needs_both_entry_values() -> None:
    window = combined_date_time("20061001", "1000-1800")
    assert window.match(("20061001",), ()) is False
    assert window.match((), ("1200",)) is False


def test_combined_rejects_lists_and_reversed_ranges() -> None:
    with pytest.raises(QueryValueError):
        combined_date_time("20061001\\20061002", "10")
    with pytest.raises(QueryValueError):
        combined_date_time("20061002-20061001", "1000")


# the night shift (PS3.4 C.2.2.2.5.1): a time range crossing midnight, with its dates
NIGHT = [
    # two days: one range from the first day's evening to the second day's morning
    ("20231231-20240101", "2200-0600", "20231231", "2330", True),
    ("20231231-20240101", "2200-0600", "20240101", "0300", True),
    ("20231231-20240101", "2200-0600", "20231231", "2100", False),
    ("20231231-20240101", "2200-0600", "20240101", "0700", False),
    # a single day: the night that starts on that day
    ("20231231", "2200-0600", "20231231", "2300", True),
    ("20231231", "2200-0600", "20240101", "0500", True),
    ("20231231", "2200-0600", "20231231", "0500", False),
    ("20231231", "2200-0600", "20240101", "2300", False),
    # open date ranges: the open end is open whatever the time
    ("20231231-", "2200-0600", "20240105", "1200", True),
    ("-20240101", "2200-0600", "20240101", "0700", False),
]


@pytest.mark.parametrize(("dq", "tq", "date", "time", "expected"), NIGHT)
def test_night_shift_ranges(dq: str, tq: str, date: str, time: str, expected: bool) -> None:
    assert combined_date_time(dq, tq).match((date,), (time,)) is expected


# a range stays a range (C.2.2.2.5.4: matched as one DT range): a one-day range with a time
# range crossing midnight ends before it starts, and is refused like a reversed date range
# (it was read as the single day's night shift, and matched the next morning)
REVERSED_DATE_TIMES = [
    ("20240101-20240101", "2200-0600"),
    ("20231231-20231231", "2300-0100"),
    ("20240101-20240101", "1800-1000"),
]


@pytest.mark.parametrize(("dq", "tq"), REVERSED_DATE_TIMES)
def test_a_range_that_ends_before_it_starts_is_refused(dq: str, tq: str) -> None:
    with pytest.raises(QueryValueError, match="starts after it ends"):
        combined_date_time(dq, tq)


RULES = [
    ("DA", "2026-11-22", "YYYYMMDD-YYYYMMDD"),
    ("DA", "20261322", "YYYYMMDD"),
    ("DA", "20261123-20261122", "starts after it ends"),
    ("TM", "2500", "HH<24"),
    ("TM", "10x", "HHMM"),
    ("DT", "2026112210x", "YYYYMMDDHHMM"),
    ("UI", "1.2.*", "no wildcards"),
    ("IS", "seven", "number"),
    ("CS", "dx", "A-Z, 0-9, space and _"),
    ("CS", "CT\\mr", "A-Z, 0-9, space and _"),
]


@pytest.mark.parametrize(("vr", "query", "hint"), RULES)
def test_errors_say_the_rule_not_the_value(vr: str, query: str, hint: str) -> None:
    with pytest.raises(QueryValueError) as info:
        compile_value(vr, query)
    message = str(info.value)
    assert hint in message
    assert query not in message  # the value may be patient data; the rule is enough
    assert len(message) <= 50  # fits an ErrorComment (64) after the attribute's tag


def test_parse_range_bounds() -> None:
    assert parse_range("DA", "20261122") == ("20261122", "20261122")
    assert parse_range("TM", "10") == ("100000000000", "105959999999")
    assert parse_range("DT", "2026") == ("20260101000000000000", "20261231235959999999")


def test_fold() -> None:
    assert fold_case_and_accents("Ñúñez^ÅSA") == "nunez^asa"


def test_sortable_instant() -> None:
    assert sortable_instant(("20261122",), ("1015",)) == "20261122101500000000"
    assert sortable_instant((), ("1015",)) == ""


# ---------------------------------------------------------------- wildcard cost (issue 8)
PATHOLOGICAL = [
    "*" * 15 + "Z",
    "*A" * 12 + "Z",
    "*?" * 10 + "*Z",
    "A*A*A*A*A*A*A*A*A*A*A*A*B",
    "*" + "?" * 30 + "*Z",
]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_wildcard_work_is_bounded(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison goes through ``matching._find``: count the searches and the characters
    they may scan. A backtracking matcher tries each star at each position (exponential in the
    number of stars); this one searches each segment once, from where the previous one ended."""
    calls: list[int] = []
    real_find = matching._find

    def counting_find(segment: str, text: str, start: int, end: int) -> int:
        calls.append(end - start)
        return real_find(segment, text, start, end)

    monkeypatch.setattr(matching, "_find", counting_find)
    matcher = compile_value("PN", pattern)
    assert isinstance(matcher, Wildcard)
    (glob,) = matcher.globs
    value = "A" * 64  # no Z, no B: every pattern fails, after the most work it can do
    assert matcher((value,)) is False
    assert len(calls) <= len(glob.segments)
    assert sum(calls) <= len(glob.segments) * len(value)


@given(
    pattern=st.text(alphabet="ab*?", max_size=8),
    value=st.text(alphabet="abc", max_size=10),
)
def test_glob_agrees_with_a_regular_expression(pattern: str, value: str) -> None:
    """The linear matcher answers as the obvious (backtracking) regular expression does."""
    reference = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    assert Glob.compile(pattern).match(value) is bool(re.fullmatch(reference, value, re.DOTALL))
