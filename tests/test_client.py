"""``wlmserver query``: identifiers from the command line, answers as table, JSON or files."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from conftest import StartServer, write_wl
from pydicom import dcmread
from pydicom.dataset import Dataset

from wlmserver import client
from wlmserver.cli import main


@pytest.mark.parametrize(
    "spec",
    [
        "(0040,0100)[0].(0008,0060)=CT",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "Modality=CT",  # an SPS key goes into the SPS item by itself
        "0040,0100[0].Modality=CT",
    ],
)
def test_key_paths(spec: str) -> None:
    ds = Dataset()
    client.set_key(ds, spec)
    assert ds.ScheduledProcedureStepSequence[0].Modality == "CT"
    assert "Modality" not in ds


def test_top_level_and_return_keys() -> None:
    ds = Dataset()
    client.set_key(ds, "PatientID=P1")
    client.set_key(ds, "(0010,0010)")
    client.set_key(ds, "ReferencedStudySequence")
    assert ds.PatientID == "P1" and ds.PatientName == ""
    assert len(ds.ReferencedStudySequence) == 1 and len(ds.ReferencedStudySequence[0]) == 0


@pytest.mark.parametrize("spec", ["NoSuchKeyword=1", "PatientID.Modality=CT", "(7777,7777)=x"])
def test_bad_keys(spec: str) -> None:
    with pytest.raises(client.UsageError):
        client.set_key(Dataset(), spec)


def test_date_shortcuts() -> None:
    today = date(2026, 11, 22)
    assert client.date_range("yesterday-tomorrow", today) == "20261121-20261123"
    assert client.date_range("-20261130", today) == "-20261130"
    for bad in ("2026xx01", "20261332", "next week"):
        with pytest.raises(client.UsageError, match="--date"):
            client.date_range(bad, today)


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(
        db / "WLM" / "a.wl",
        PatientName="NAKAMURA^KENJI",
        PatientID="P1",
        sps=[
            {"Modality": "CT", "ScheduledStationAETitle": "CT01"},
            {"Modality": "MR", "ScheduledStationAETitle": "MR01", "ScheduledProcedureStepID": "S2"},
        ],
    )
    write_wl(db / "WLM" / "b.wl", PatientName="OSEI^ABENA", PatientID="P2", AccessionNumber="A2")
    return db


def test_table(start_server: StartServer, served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = start_server()
    assert main(["query", "127.0.0.1", str(server.port), "-aec", "WLM", "--modality", "CT"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["Date", "Time", "Mod", "Station", "PatientName", "PatientID",
                                "Accession", "Step"]  # fmt: skip
    assert len(lines) == 3 and all(" CT " in line for line in lines[1:])
    assert "2 answers; final status 0x0000 (Success)" in captured.err


def test_json_and_files(
    start_server: StartServer, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    argv = ["query", "127.0.0.1", str(server.port), "-aec", "WLM", "--station", "MR01"]
    assert main([*argv, "--json"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["00100020"]["Value"] == ["P1"]
    assert answer["00400100"]["Value"][0]["00080060"]["Value"] == ["MR"]
    assert main([*argv, "--write", str(tmp_path / "out")]) == 0
    (path,) = sorted((tmp_path / "out").iterdir())
    ds = dcmread(path)
    assert ds.PatientID == "P1" and len(ds.ScheduledProcedureStepSequence) == 1


def test_failure_status_and_no_association(
    start_server: StartServer, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    base = ["query", "127.0.0.1", str(server.port)]
    bad = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=2026xx01"
    assert main([*base, "-aec", "WLM", "-k", bad]) == 1
    assert "final status 0xA900 (Failure)" in capsys.readouterr().err
    assert main([*base, "-aec", "NOSUCHAE"]) == 3
    assert "rejected" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--date", "soon"])
    assert exit_info.value.code == 2
