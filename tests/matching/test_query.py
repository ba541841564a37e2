"""Compiling identifiers: validation errors, sequences, combined date-time, charsets."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.dataset import Dataset

from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import MatchingKeys
from wlmserver.matching.query import QueryError, compile_query
from wlmserver.matching.record import Record
from wlmserver.matching.status import Status
from wlmserver.store.wlfile import read_worklist_file


def _query(sps: dict[str, str] | None = None, **top: str) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    if sps is not None:
        item = Dataset()
        for keyword, value in sps.items():
            setattr(item, keyword, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


@pytest.fixture
def entries(tmp_path: Path) -> list[Entry]:
    """Three steps: a CT and an MR in one file, a US in another (Latin-1 name)."""
    a = write_wl(
        tmp_path / "a.wl",
        sps=[
            {
                "Modality": "CT",
                "ScheduledStationAETitle": ["CT01", "CT02"],
                "ScheduledProcedureStepStartTime": "0900",
            },
            {
                "Modality": "MR",
                "ScheduledStationAETitle": "MR01",
                "ScheduledProcedureStepStartDate": "20261123",
                "ScheduledProcedureStepStartTime": "1400",
            },
        ],
    )
    b = write_wl(
        tmp_path / "b.wl",
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        PatientID="PID002",
        StudyDate="20261122",
        StudyTime="1100",
        sps=[
            {
                "Modality": "US",
                "ScheduledStationAETitle": "US01",
                "ScheduledProcedureStepStartTime": "1100",
            }
        ],
    )
    return [*read_worklist_file(a).entries, *read_worklist_file(b).entries]


def _modalities(query: Dataset, entries: list[Entry], **options: bool) -> list[str]:
    compiled = compile_query(query, **options)
    return [e.sps.Modality for e in entries if compiled.matches(e)]


QUERIES = [
    ({}, {}, ["CT", "MR", "US"]),
    ({}, {"Modality": "MR"}, ["MR"]),
    ({}, {"Modality": "CT\\US"}, ["CT", "US"]),
    ({}, {"ScheduledStationAETitle": "CT02"}, ["CT"]),  # multi-valued in the file
    ({}, {"ScheduledStationAETitle": "*01"}, ["CT", "MR", "US"]),
    ({"PatientID": "PID001"}, {}, ["CT", "MR"]),
    ({"PatientName": "Müller*"}, {}, ["US"]),
    ({"PatientName": "MÜLLER*"}, {}, []),  # case-sensitive by default
    ({}, {"ScheduledProcedureStepStartDate": "20261122"}, ["CT", "US"]),
    ({}, {"ScheduledProcedureStepStartDate": "20261123-"}, ["MR"]),
    ({}, {"ScheduledProcedureStepStartTime": "1000-1500"}, ["MR", "US"]),
    # combined: 22 Nov 10:00 to 23 Nov 13:00 (C.2.2.2.5.1)
    (
        {},
        {
            "ScheduledProcedureStepStartDate": "20261122-20261123",
            "ScheduledProcedureStepStartTime": "1000-1300",
        },
        ["US"],
    ),
    (
        {},
        {
            "ScheduledProcedureStepStartDate": "20261122-20261123",
            "ScheduledProcedureStepStartTime": "0800-1400",
        },
        ["CT", "MR", "US"],
    ),
    ({"StudyDate": "20261122", "StudyTime": "1000-1200"}, {}, ["US"]),
    ({"StudyDate": "20261122"}, {}, ["US"]),  # entries without StudyDate do not match
    ({"AccessionNumber": "ACC001"}, {"Modality": "US"}, ["US"]),
    ({"AccessionNumber": "NOPE"}, {}, []),
    ({"PatientSex": "F", "ReferringPhysicianName": "HOUSE*"}, {}, ["CT", "MR", "US"]),
    # any attribute the entry carries, not only Table K.6-1 keys
    (
        {"RequestedProcedurePriority": "ROUTINE"},
        {"ScheduledStationName": "CTROOM1"},
        ["CT", "MR", "US"],
    ),
    ({"PatientBirthDate": "-19791231"}, {}, []),
]


@pytest.mark.parametrize(("top", "sps", "expected"), QUERIES)
def test_queries(
    entries: list[Entry], top: dict[str, str], sps: dict[str, str], expected: list[str]
) -> None:
    assert _modalities(_query(sps, **top), entries) == expected


def test_pn_case_insensitive_option(entries: list[Entry]) -> None:
    assert _modalities(_query({}, PatientName="MULLER*"), entries, pn_fold=True) == ["US"]


def test_utf8_query_finds_latin1_file(entries: list[Entry]) -> None:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.PatientName = "Müller^Jürgen"
    raw = query.copy()  # as it arrives: UTF-8 bytes, decoded by its own character set
    assert _modalities(raw, entries) == ["US"]


RPCS, SPCS = 0x00321064, 0x00400008  # Requested Procedure / Scheduled Protocol Code Sequence


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # optional keys wlmserver does not match by default: return keys only (K.2.2.1.1.2)
        (MatchingKeys(), (True, True, True, True)),
        # a profile's match-keys: sequence matching (C.2.2.2.6) on the items' keys
        (MatchingKeys(frozenset({RPCS, SPCS})), (True, False, True, False)),
        (MatchingKeys(all_keys=True), (True, False, True, False)),
    ],
)
def test_sequence_matching_on_nested_items(
    tmp_path: Path, matching: MatchingKeys, expected: tuple[bool, ...]
) -> None:
    ds = make_dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "P1", "99L", "Head"
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [code]
    (entry,) = read_worklist_file(write_wl(tmp_path / "s.wl", ds)).entries
    wanted = Dataset()
    wanted.CodeValue = "P1"
    other = Dataset()
    other.CodeValue = "P2"
    got = []
    for item in (wanted, other, Dataset()):
        query = _query({})
        query.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [item]
        got.append(compile_query(query, matching=matching).matches(entry))
    # a constrained sequence the entry lacks does not match
    query = _query()
    query.RequestedProcedureCodeSequence = [wanted]
    got.append(compile_query(query, matching=matching).matches(entry))
    assert tuple(got) == expected


ERRORS = [
    (_query({"ScheduledProcedureStepStartDate": "2026-11-22"}), 0x00400002, "YYYYMMDD"),
    (_query({"ScheduledProcedureStepStartTime": "2500"}), 0x00400003, "time"),
    (_query({"ScheduledProcedureStepStartDate": "20261123-20261122"}), 0x00400002, "after"),
    (
        _query(
            {
                "ScheduledProcedureStepStartDate": "20261123-20261122",
                "ScheduledProcedureStepStartTime": "1800-1000",
            }
        ),
        0x00400002,
        "after",
    ),
    # one day and a time range crossing midnight: a date-time range ending before it starts
    (
        _query(
            {
                "ScheduledProcedureStepStartDate": "20240101-20240101",
                "ScheduledProcedureStepStartTime": "2200-0600",
            }
        ),
        0x00400003,
        "after",
    ),
    (_query(StudyInstanceUID="1.2.*"), 0x0020000D, "UID"),
    (_query(PatientBirthDate="yesterday"), 0x00100030, "date"),
]
# a key outside the default matching keys is validated when a profile matches it (and only then)
PROFILE_ERRORS = [
    (_query(IssueDateOfImagingServiceRequest="xx"), 0x00402004, "date"),
    (_query({"ScheduledProcedureStepEndDate": "2026-11-22"}), 0x00400004, "YYYYMMDD"),
]


@pytest.mark.parametrize(("query", "tag", "words"), ERRORS)
def test_invalid_values_name_the_element(query: Dataset, tag: int, words: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_query(query)
    assert tag in info.value.tags
    assert words in info.value.message
    assert info.value.status is Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS


@pytest.mark.parametrize(("query", "tag", "words"), PROFILE_ERRORS)
def test_invalid_values_of_return_keys_are_not_looked_at(
    query: Dataset, tag: int, words: str
) -> None:
    assert compile_query(query).return_only[0].tag == tag
    with pytest.raises(QueryError) as info:
        compile_query(query, matching=MatchingKeys(frozenset({tag})))
    assert tag in info.value.tags and words in info.value.message


def test_two_sps_items_is_an_error() -> None:
    query = _query({"Modality": "CT"})
    query.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(QueryError, match="2 items") as info:
        compile_query(query)
    assert info.value.tags == (0x00400100,)


def test_two_items_in_any_sequence_is_an_error() -> None:
    query = _query()
    query.RequestedProcedureCodeSequence = [Dataset(), Dataset()]
    with pytest.raises(QueryError, match="RequestedProcedureCodeSequence"):
        compile_query(query)


def test_unknown_character_set_is_an_error() -> None:
    query = _query(PatientName="X")
    query.SpecificCharacterSet = "ISO_IR 999"
    with pytest.raises(QueryError, match="ISO_IR 999") as info:
        compile_query(query)
    assert info.value.tags == (0x00080005,)


def test_empty_sps_item_is_expanded_unless_disabled() -> None:
    query = _query({})
    expanded = compile_query(query).sps_keys
    assert expanded is not None
    assert "ScheduledStationAETitle" in expanded and "Modality" in expanded
    assert "ScheduledProtocolCodeSequence" in expanded
    kept = compile_query(query, expand_empty_sps=False).sps_keys
    assert kept is not None and len(kept) == 0


def test_query_without_sps_asks_for_no_sps() -> None:
    assert compile_query(_query(PatientName="")).sps_keys is None


def _step_at(day: str, time: str) -> Entry:
    sps = Record([(0x00400002, "DA", (day,)), (0x00400003, "TM", (time,))])
    return Entry("x.wl", 0, Record([]), sps, (), ("", "x.wl", 0))


# C.2.2.2.5.4: a date and a time are one date-time range when both have the same form of range
# matching (or the date is a single day); otherwise each is matched on its own.
FORMS = [
    # both ranges: one date-time range, across midnight too
    ("20231231-20240101", "2200-0600", "20231231", "2330", True),
    ("20231231-20240101", "2200-0600", "20240101", "0300", True),
    ("20231231-20240101", "2200-0600", "20231231", "0300", False),
    ("20231231-20240101", "2200-0600", "20240102", "0300", False),
    # a date range with a single time: those days, at that time
    ("20231226-20231230", "2115", "20231228", "2115", True),
    ("20231226-20231230", "2115", "20231228", "1200", False),
    # a single day with a time range: that day's window; crossing midnight, the night that
    # starts that day
    ("20231231", "2200-0600", "20231231", "2300", True),
    ("20231231", "2200-0600", "20240101", "0500", True),
    ("20231231", "2200-0600", "20231231", "0500", False),
    ("20231231", "1000-1800", "20231231", "1200", True),
    # open ends of different forms: each on its own
    ("20231231-", "-1300", "20240105", "1200", True),
    ("20231231-", "-1300", "20240105", "1400", False),
    # the same open form: one range from the first instant
    ("20231231-", "2200-", "20240105", "0100", True),
    ("20231231-", "2200-", "20231231", "2100", False),
]


@pytest.mark.parametrize(("dq", "tq", "day", "time", "expected"), FORMS)
def test_date_and_time_combine_only_in_the_same_form(
    dq: str, tq: str, day: str, time: str, expected: bool
) -> None:
    query = _query({"ScheduledProcedureStepStartDate": dq, "ScheduledProcedureStepStartTime": tq})
    assert compile_query(query).matches(_step_at(day, time)) is expected
