"""Modality profiles, end to end: chosen by calling AE title, they narrow queries and shape
answers, and the log and the request capture say which one applied."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from conftest import StartServer, dcmjs_query, make_dataset, write_wl
from pydicom import Dataset
from pynetdicom import AE

from wlmserver.config.file import load as load_config_file
from wlmserver.config.profiles import Profile, Profiles
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.service.server import MODALITY_WORKLIST_FIND

TODAY = datetime.date.today()


def _day(offset: int) -> str:
    return (TODAY + datetime.timedelta(days=offset)).strftime("%Y%m%d")


def _find(port: int, identifier: Dataset, calling: str) -> list[Dataset]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    assert assoc.is_established
    answers = []
    try:
        for status, answer in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
            assert status is not None
            if status.Status == 0xFF00:
                answers.append(answer)
            else:
                assert status.Status == 0x0000, status
    finally:
        assoc.release()
    return answers


def _query(**sps: str) -> Dataset:
    query = Dataset()
    query.PatientID = ""
    if sps:
        item = Dataset()
        for keyword, value in sps.items():
            setattr(item, keyword, value)
        query.ScheduledProcedureStepSequence = [item]
    return query


@pytest.fixture
def stations(db: Path) -> Path:
    """Steps for CT01 and MR01 today, and for CT01 in five days."""
    for pid, station, day in (("P1", "CT01", 0), ("P2", "MR01", 0), ("P3", "CT01", 5)):
        sps = [{"ScheduledStationAETitle": station, "ScheduledProcedureStepStartDate": _day(day)}]
        write_wl(db / "WLM" / f"{pid}.wl", make_dataset(sps, PatientID=pid))
    return db


CT = Profile("ct", ("CT*",), station_filter=True)


def _ids(answers: list[Dataset]) -> list[str]:
    return sorted(a.PatientID for a in answers)


def test_station_filter_narrows_a_query_without_a_station(
    start_server: StartServer, stations: Path
) -> None:
    server = start_server(profiles=Profiles((CT,)))
    assert _ids(_find(server.port, _query(), "CT01")) == ["P1", "P3"]
    # the constraint is not returned: the query did not ask for the SPS sequence
    assert all(
        "ScheduledProcedureStepSequence" not in a for a in _find(server.port, _query(), "CT01")
    )
    # a station the query names is the query's choice
    assert _ids(_find(server.port, _query(ScheduledStationAETitle="MR01"), "CT01")) == ["P2"]
    assert _ids(_find(server.port, _query(ScheduledStationAETitle="*"), "CT01")) == ["P1", "P3"]
    # other calling AE titles have no profile here
    assert _ids(_find(server.port, _query(), "MR01")) == ["P1", "P2", "P3"]


def test_a_date_window_applies_when_the_date_is_universal(
    start_server: StartServer, stations: Path
) -> None:
    window = Profile("default", date_window=(-1, 1))
    server = start_server(profiles=Profiles((window,)))
    assert _ids(_find(server.port, _query(), "ANY")) == ["P1", "P2"]
    assert _ids(_find(server.port, _query(ScheduledProcedureStepStartDate=""), "ANY")) == [
        "P1",
        "P2",
    ]
    asked = _query(ScheduledProcedureStepStartDate=_day(5))
    assert _ids(_find(server.port, asked, "ANY")) == ["P3"]


def test_character_set_policy_per_profile(start_server: StartServer, db: Path) -> None:
    write_wl(
        db / "WLM" / "a.wl",
        make_dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen"),
    )
    latin = Profile("old", ("OLDCT",), charset_policy=CharsetPolicy.LATIN1)
    server = start_server(profiles=Profiles((latin,)))
    query = Dataset()
    query.PatientName = ""
    (modern,) = _find(server.port, query, "NEWCT")
    (old,) = _find(server.port, query, "OLDCT")
    assert modern.SpecificCharacterSet == "ISO_IR 192"
    assert old.SpecificCharacterSet == "ISO_IR 100"
    assert str(old.PatientName) == str(modern.PatientName) == "Müller^Jürgen"


def test_sps_expansion_off_per_profile(start_server: StartServer, db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", make_dataset())
    server = start_server(profiles=Profiles((Profile("nse", ("NSE*",), expand_empty_sps=False),)))
    query = Dataset()
    query.ScheduledProcedureStepSequence = [Dataset()]
    (expanded,) = _find(server.port, query, "CT01")
    (whole,) = _find(server.port, query, "NSE01")
    assert "PreMedication" in expanded.ScheduledProcedureStepSequence[0]  # an expanded key
    # as -nse: the empty item asks for no SPS keys
    assert "PreMedication" not in whole.ScheduledProcedureStepSequence[0]
    assert "ScheduledStationName" not in whole.ScheduledProcedureStepSequence[0]


def test_empty_optional_keys_left_out_per_profile(start_server: StartServer, db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", make_dataset())
    omit = Profile("picky", ("PICKY",), omit_empty_optional=True)
    server = start_server(profiles=Profiles((omit,)))
    query = Dataset()
    query.PatientID = ""
    query.IssuerOfPatientID = ""  # Type 3, not in the entry
    query.PatientWeight = None  # Type 2, not in the entry
    query.StudyDate = ""  # Type 3, not in the entry
    item = Dataset()
    item.CommentsOnTheScheduledProcedureStep = ""  # Type 3
    item.ScheduledStationName = ""  # Type 2, in the entry
    query.ScheduledProcedureStepSequence = [item]
    (full,) = _find(server.port, query, "CT01")
    (picky,) = _find(server.port, query, "PICKY")
    for keyword in ("IssuerOfPatientID", "PatientWeight", "StudyDate"):
        assert keyword in full
    assert "PatientWeight" in picky and picky.PatientID == "PID001"
    assert "IssuerOfPatientID" not in picky and "StudyDate" not in picky
    assert "CommentsOnTheScheduledProcedureStep" in full.ScheduledProcedureStepSequence[0]
    picky_item = picky.ScheduledProcedureStepSequence[0]
    assert "CommentsOnTheScheduledProcedureStep" not in picky_item
    assert picky_item.ScheduledStationName == "CTROOM1"


def test_log_and_capture_say_which_profile_applied(
    start_server: StartServer,
    stations: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    captured = tmp_path / "requests"
    server = start_server(
        profiles=Profiles((CT,)), request_file_path=captured, request_file_format="#a.dump"
    )
    caplog.set_level(logging.INFO, "wlmserver")
    _find(server.port, _query(), "CT01")
    _find(server.port, _query(), "MR01")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("C-FIND")]
    assert any(line.endswith("[profile ct]") and "2 answers" in line for line in lines), lines
    assert any("MR01" in line and "profile" not in line for line in lines), lines
    ct_dump = (captured / "CT01.dump").read_text().splitlines()
    assert ct_dump[0] == (
        "# wlmserver profile: ct; added ScheduledStationAETitle (0040,0001) = CT01"
    )
    assert not (captured / "MR01.dump").read_text().startswith("#")


# the profiles of a configuration file (``[profiles.X]``), and what a dcmjs-dimse query (which
# sends Pregnancy Status 0) gets from each calling AE title: by default Pregnancy Status is a
# return key only; a profile's match-keys (or match-all-keys) makes it match again
MATCH_PROFILES = """
[profiles.us]
calling-ae-titles = ["US*"]
match-keys = ["PregnancyStatus"]
[profiles.old]
calling-ae-titles = ["OLD*"]
match-all-keys = true
"""
MATCHED_BY_PROFILE = [
    ("CT01", 0, ["P1", "P2", "P3"]),
    ("CT01", 4, ["P1", "P2", "P3"]),
    ("US01", 0, []),
    ("US01", 4, ["P1"]),
    ("OLD01", 0, []),
    ("OLD01", 1, ["P2"]),
]


@pytest.mark.parametrize(("calling", "status", "expected"), MATCHED_BY_PROFILE)
def test_match_keys_of_a_profile_make_a_return_key_match(
    start_server: StartServer,
    db: Path,
    tmp_path: Path,
    calling: str,
    status: int,
    expected: list[str],
) -> None:
    for pid, value in (("P1", 4), ("P2", 1), ("P3", None)):
        ds = make_dataset(PatientID=pid)
        if value is not None:
            ds.PregnancyStatus = value
        write_wl(db / "WLM" / f"{pid}.wl", ds)
    config_file = tmp_path / "wlmserver.toml"
    config_file.write_text(MATCH_PROFILES)
    server = start_server(profiles=load_config_file(config_file).profiles)
    answers = _find(server.port, dcmjs_query(status), calling)
    assert _ids(answers) == expected
    # the key is still returned, filled from the entry
    assert all(a.PregnancyStatus == {"P1": 4, "P2": 1}.get(a.PatientID) for a in answers)
