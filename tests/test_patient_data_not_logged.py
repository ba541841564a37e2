"""Patient data never reaches the log at INFO or above: a representative run (files served,
files refused, queries with names and IDs as values, invalid queries, request capture, a file
dropped and removed while running, the create and check tools) with everything logged at INFO
captured, and none of the names or IDs used may appear in it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from conftest import StartServer, find, make_dataset, write_wl
from pydicom.dataset import Dataset

from wlmserver.cli import main

NAMES = ("ZQXSECRET^ALICE", "ZQXHIDDEN^BORIS", "MÜLLERZQX^JÜRGEN", "ZQXCREATE^CARLA")
IDS = ("PIDZQX4711", "PIDZQX0815", "PIDZQX9999", "PIDZQXCREATE")
SECRETS = (*NAMES, *IDS, *(n.split("^")[0] for n in NAMES))


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text or s.lower() in text.lower()]


def _files(db: Path) -> None:
    folder = db / "WLM"
    write_wl(folder / "good.wl", PatientName=NAMES[0], PatientID=IDS[0])
    write_wl(
        folder / "latin1.wl",
        make_dataset(SpecificCharacterSet="ISO_IR 100", PatientName=NAMES[2], PatientID=IDS[2]),
    )
    # not served: a Type 1 attribute missing, a value not valid for its VR
    write_wl(
        folder / "incomplete.wl", PatientName=NAMES[1], PatientID=IDS[1], sps=[{"Modality": None}]
    )
    write_wl(folder / "baddate.wl", PatientName=NAMES[1], PatientID=IDS[1], PatientBirthDate="x1")
    # not served: cut short; text that does not decode in its character set
    data = (folder / "good.wl").read_bytes()
    (folder / "cut.wl").write_bytes(data[: len(data) - 7])
    utf8 = make_dataset(SpecificCharacterSet="ISO_IR 192", PatientName=NAMES[1], PatientID=IDS[1])
    write_wl(folder / "undecodable.wl", utf8)
    raw = (folder / "undecodable.wl").read_bytes()
    (folder / "undecodable.wl").write_bytes(raw.replace(b"ZQXHIDDEN", b"ZQXHIDD\xff\xfe"))


def _queries(port: int) -> None:
    def query(sps: dict[str, str] | None = None, **top: str) -> Dataset:
        ds = Dataset()
        ds.PatientName = ""
        ds.PatientID = ""
        for keyword, value in top.items():
            setattr(ds, keyword, value)
        item = Dataset()
        for keyword, value in (sps or {}).items():
            setattr(item, keyword, value)
        ds.ScheduledProcedureStepSequence = [item]
        return ds

    assert find(port, query(PatientName=NAMES[0]))[-1][0] == 0
    assert find(port, query(PatientID=IDS[0]))[-1][0] == 0
    assert find(port, query(PatientName="ZQXSECRET*", PatientID=IDS[3]))[-1][0] == 0
    # invalid queries: a bad date beside a name, an unknown character set, two SPS items
    bad = query(PatientName=NAMES[0], PatientID=IDS[0], PatientBirthDate="19800132")
    assert find(port, bad)[-1][0] >= 0xA000
    bad = query(PatientName=NAMES[1], SpecificCharacterSet="ISO_IR 999")
    assert find(port, bad)[-1][0] >= 0xA000
    two = query({"Modality": "CT"}, PatientID=IDS[1])
    two.ScheduledProcedureStepSequence.append(Dataset())
    assert find(port, two)[-1][0] >= 0xA000
    bad = query({"ScheduledProcedureStepStartDate": "2026-11-22"}, PatientName=NAMES[2])
    assert find(port, bad)[-1][0] >= 0xA000


def test_no_patient_name_or_id_in_the_log_at_info(
    start_server: StartServer,
    db: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    _files(db)
    server = start_server(request_file_path=tmp_path / "requests", request_file_format="#p-#a.dump")
    _queries(server.port)
    # dropped while running: served, refused, removed
    write_wl(db / "WLM" / ".late.wl.tmp", PatientName=NAMES[0], PatientID=IDS[0])
    (db / "WLM" / ".late.wl.tmp").rename(db / "WLM" / "late.wl")
    write_wl(db / "WLM" / "late-bad.wl", PatientName=NAMES[1], sps=[{"Modality": None}])
    deadline = time.monotonic() + 5
    everything = Dataset()
    everything.PatientID = ""
    while len(find(server.port, everything)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    (db / "WLM" / "late.wl").unlink()
    time.sleep(0.3)
    # the tools: check the database; create an order and refuse an invalid one
    main(["check", str(db)])
    orders = tmp_path / "orders.json"
    order = {
        "PatientName": NAMES[3],
        "PatientID": IDS[3],
        "AccessionNumber": "A100",
        "RequestedProcedureDescription": "CT HEAD",
        "ScheduledStationAETitle": "CT01",
        "Modality": "CT",
        "ScheduledProcedureStepStartDate": "20261201",
        "ScheduledProcedureStepStartTime": "0930",
        "ScheduledProcedureStepDescription": "HEAD W/O",
    }
    invalid = {**order, "AccessionNumber": "A101", "PatientBirthDate": "notadate"}
    orders.write_text(json.dumps([order, invalid, {"PatientName": NAMES[3], "PatientID": IDS[3]}]))
    main(["create", "-o", str(tmp_path / "out" / "CT01"), str(orders)])
    main(["check", str(tmp_path / "out")])
    err = capsys.readouterr().err

    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in records)
    assert len(records) > 10, "the scenarios logged nothing: the capture is not working"
    assert "not served" in text and "invalid query" in text  # the refusals were logged
    assert not _leaks(text), f"patient data in the log: {_leaks(text)}\n{text}"
    assert not _leaks(err), f"patient data in the tools' messages: {_leaks(err)}\n{err}"


def test_a_failed_request_capture_does_not_log_the_patient_id(
    start_server: StartServer, db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "good.wl", PatientName=NAMES[0], PatientID=IDS[0])
    requests = tmp_path / "requests"
    requests.mkdir(mode=0o700)
    (requests / f"{IDS[0]}.dump").touch()
    for n in range(2, 10_001):  # a modality that polled one patient's worklist 10,000 times
        (requests / f"{IDS[0]}_{n}.dump").touch()
    server = start_server(request_file_path=requests, request_file_format="#p.dump")
    caplog.set_level(logging.INFO)
    query = Dataset()
    query.PatientID = IDS[0]
    assert find(server.port, query)[-1][0] == 0
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "request file" in text  # the failure was logged
    assert not _leaks(text), f"patient data in the log: {_leaks(text)}\n{text}"
