"""Patient data never reaches the log at INFO or above: a representative run (files served,
files refused, queries with names and IDs as values, invalid queries, request capture, a file
dropped and removed while running, the create and check tools) with everything logged at INFO
captured, and none of the names or IDs used may appear in it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, find, make_dataset, make_final, make_mpps, until, write_wl
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from wlmserver.cli import main
from wlmserver.config.forward import ForwardTarget
from wlmserver.service.server import MODALITY_PERFORMED_PROCEDURE_STEP

NAMES = ("ZQXSECRET^ALICE", "ZQXHIDDEN^BORIS", "MÜLLERZQX^JÜRGEN", "ZQXCREATE^CARLA")
IDS = ("PIDZQX4711", "PIDZQX0815", "PIDZQX9999", "PIDZQXCREATE")
#: Order identifiers: an accession number identifies a patient's order, and the requested
#: procedure and scheduled step IDs are often the accession number (``wlmserver create``
#: makes the first one so): none at INFO either (issue 20).
ORDER_IDS = ("ACCZQX2001", "ACCZQX2002", "RPZQX2001", "SPSZQX2001", "RPZQX2002", "SPSZQX2002")
SECRETS = (*NAMES, *IDS, *ORDER_IDS, *(n.split("^")[0] for n in NAMES))


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


def _ris(refuse: str) -> tuple[Any, list[str]]:
    """A RIS (a pynetdicom MPPS SCP on a free loopback port): accepts every request but the
    N-CREATE of ``refuse`` (0x0106, for good); the server and what it received."""
    received: list[str] = []

    def create(event: Any) -> tuple[int, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID)
        received.append(f"create {uid}")
        return (0x0106 if uid == refuse else 0x0000), None

    def update(event: Any) -> tuple[int, Dataset | None]:
        received.append(f"set {event.request.RequestedSOPInstanceUID}")
        return 0x0000, None

    ae = AE(ae_title="RIS")
    ae.add_supported_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    handlers = [(evt.EVT_N_CREATE, create), (evt.EVT_N_SET, update)]
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers), received


def test_no_patient_or_order_identifiers_in_mpps_and_forwarding_lines_at_info(
    start_server: StartServer,
    db: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MPPS lines carried the steps' accession numbers at INFO (issue 20, finding 7): a
    modality's exam (N-CREATE, N-SETs), a group case, refusals, forwarding to a RIS that
    accepts and one it refuses for good, and ``check`` of the queue."""
    caplog.set_level(logging.INFO)
    write_wl(
        db / "WLM" / "order.wl",
        PatientName=NAMES[0],
        PatientID=IDS[0],
        AccessionNumber=ORDER_IDS[0],
        RequestedProcedureID=ORDER_IDS[2],
        sps=[{"ScheduledProcedureStepID": ORDER_IDS[3]}],
    )
    refused_by_ris = "1.2.826.0.1.3680043.10.9999.93"
    ris, received = _ris(refused_by_ris)
    try:
        server = start_server(
            mpps_forward=ForwardTarget("RIS", "127.0.0.1", int(ris.server_address[1]))
        )
        patient = {"PatientName": NAMES[0], "PatientID": IDS[0]}
        first = {
            "AccessionNumber": ORDER_IDS[0],
            "RequestedProcedureID": ORDER_IDS[2],
            "ScheduledProcedureStepID": ORDER_IDS[3],
        }
        second = {
            "AccessionNumber": ORDER_IDS[1],
            "RequestedProcedureID": ORDER_IDS[4],
            "ScheduledProcedureStepID": ORDER_IDS[5],
        }
        uid, group = "1.2.826.0.1.3680043.10.9999.91", "1.2.826.0.1.3680043.10.9999.92"
        ae = AE(ae_title="CT01")
        ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
        assert assoc.is_established
        sop_class = MODALITY_PERFORMED_PROCEDURE_STEP
        try:
            statuses = [
                assoc.send_n_create(make_mpps(steps=[first], **patient), sop_class, uid)[0],
                assoc.send_n_create(make_mpps(steps=[first, second], **patient), sop_class, group)[
                    0
                ],
                assoc.send_n_create(
                    make_mpps(steps=[second], **patient), sop_class, refused_by_ris
                )[0],
                # refused here: a Type 1 attribute missing; an N-SET changing the patient
                assoc.send_n_create(
                    make_mpps(steps=[second], Modality=None, **patient), sop_class, "1.2.3.94"
                )[0],
                assoc.send_n_set(make_final(PatientID=IDS[1]), sop_class, uid)[0],
                assoc.send_n_set(make_final(), sop_class, uid)[0],
                assoc.send_n_set(make_final(), sop_class, group)[0],
            ]
        finally:
            assoc.release()
        codes = [int(status.Status) for status in statuses]
        assert codes == [0, 0, 0, 0x0120, 0x0105, 0, 0], codes
        expected = {f"create {uid}", f"create {group}", f"create {refused_by_ris}"}
        expected |= {f"set {uid}", f"set {group}"}
        assert until(lambda: expected <= set(received), 20), received
        assert until(lambda: any("not forwarded" in r.getMessage() for r in caplog.records), 10)
        query = Dataset()
        query.PatientID = IDS[0]
        query.ScheduledProcedureStepSequence = [Dataset()]
        query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
        assert find(server.port, query)[-1][0] == 0
        main(["check", str(db)])
        err = capsys.readouterr().err
    finally:
        ris.shutdown()
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in records)
    mpps_lines = [line for line in text.splitlines() if "MPPS" in line]
    assert len(mpps_lines) >= 8, text  # the requests, refusals and forwarding were logged
    assert "not forwarded" in text and "refused" in text
    assert not _leaks(text), f"patient data in the log: {_leaks(text)}\n{text}"
    assert not _leaks(err), f"patient data in the tools' messages: {_leaks(err)}\n{err}"
