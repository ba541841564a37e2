"""``wlmserver explain``: which key stops an entry, by the server's own matching."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.cli import main


@pytest.fixture
def store(db: Path) -> Path:
    write_wl(
        db / "WLM" / "ct.wl",
        PatientName="NAKAMURA^KENJI",
        PatientID="P1",
        AccessionNumber="A1",
        sps=[
            {"ScheduledStationAETitle": "CT1", "Modality": "CT"},
            {
                "ScheduledStationAETitle": "CT01",
                "Modality": "CT",
                "ScheduledProcedureStepID": "S2",
                "ScheduledProcedureStepStartDate": "20261121",
                "ScheduledProcedureStepStartTime": "0930",
            },
        ],
    )
    write_wl(db / "WLM" / "mr.wl", PatientID="P2", AccessionNumber="A2", sps=[{"Modality": "MR"}])
    return db


def _run(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["explain", str(store), *args])
    return status, capsys.readouterr().out.splitlines()


def test_each_failing_key_with_query_and_entry_values(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = _run(store, capsys, "--station", "CT01", "--date", "20261122")
    by_where = {line.split()[1].rstrip(":"): line for line in lines}
    assert status == 0 and by_where["WLM/mr.wl#1"] == "MATCH  WLM/mr.wl#1"
    first = by_where["WLM/ct.wl#1"]
    assert first.startswith("NO ")
    assert "ScheduledStationAETitle (0040,0001): query CT01, entry has CT1" in first
    second = by_where["WLM/ct.wl#2"]
    assert (
        "ScheduledProcedureStepStartDate (0040,0002): query 20261122, entry has 20261121" in second
    )
    assert "Modality" not in second


def test_matches_and_combined_date_time(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = ["-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261121"]
    query += ["-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1000-1200"]
    status, lines = _run(store, capsys, *query, "--entry-accession", "A1")
    assert status == 1 and len(lines) == 2  # only the entries of accession A1
    assert any(
        "ScheduledProcedureStepStartDate/Time: entry 20261121 0930 outside the query's "
        "20261121 1000-1200" in line
        for line in lines
    )
    status, lines = _run(store, capsys, "--modality", "MR")
    assert status == 0 and [line for line in lines if line.startswith("MATCH")] == [
        "MATCH  WLM/mr.wl#1"
    ]


def test_person_name_case_hint(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = _run(store, capsys, "--name", "nakamura*", "--entry-patient-id", "P1")
    assert all("case (or accents) differ" in line for line in lines) and len(lines) == 2
    status, lines = _run(store, capsys, "--name", "nakamura*", "--pn-case-insensitive")
    assert status == 0 and sum(line.startswith("MATCH") for line in lines) == 2


def test_invalid_query_and_unknown_folder(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=2026xx01"
    status, lines = _run(store, capsys, "-k", bad)
    assert status == 1 and "status 0xA900" in lines[0]
    status, lines = _run(store, capsys, "-aec", "NOSUCH")
    assert status == 1 and "would be rejected" in lines[0]


def test_json_drops_are_explained_with_the_option(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    order = {
        "PatientName": "KIM^MIA",
        "PatientID": "P3",
        "AccessionNumber": "A3",
        "RequestedProcedureDescription": "MR BRAIN",
        "ScheduledStationAETitle": "MR01",
        "Modality": "MR",
        "ScheduledProcedureStepStartDate": "20261201",
        "ScheduledProcedureStepStartTime": "1100",
        "ScheduledProcedureStepDescription": "BRAIN",
    }
    (store / "WLM" / "kim.json").write_text(json.dumps(order), encoding="utf-8")
    _, lines = _run(store, capsys, "--modality", "MR")
    assert not any("kim.json" in line for line in lines)
    _, lines = _run(store, capsys, "--modality", "MR", "--json-drops")
    assert "MATCH  WLM/kim.json#1" in lines
