"""``wlmserver query``: identifiers from the command line, answers as table, JSON or files."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, write_wl
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from wlmserver.cli import main
from wlmserver.service.server import MODALITY_WORKLIST_FIND
from wlmserver.tools import client


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
            {
                "Modality": "MR",
                "ScheduledStationAETitle": "MR01",
                "ScheduledProcedureStepID": "S2",
                "ScheduledProcedureStepStatus": "SCHEDULED",
            },
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
                                "Accession", "Step", "Status"]  # fmt: skip
    assert len(lines) == 3 and all(" CT " in line for line in lines[1:])
    assert main(["query", str(server.port), "-aec", "WLM", "--modality", "MR"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.endswith(" SCHEDULED")  # the step's status, requested by default
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


def test_a_lone_number_is_the_port(
    start_server: StartServer, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.address(None, None) == ("127.0.0.1", 11112)
    assert client.address("11600", None) == ("127.0.0.1", 11600)
    assert client.address("pacs.example", "104") == ("pacs.example", 104)
    for host, port in (("11600", "104"), ("pacs", "x"), ("70000", None), ("pacs", "0")):
        with pytest.raises(client.UsageError):
            client.address(host, port)
    server = start_server()
    assert main(["query", "-aec", "WLM", str(server.port), "--modality", "MR"]) == 0
    assert "1 answers; final status 0x0000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "-aec", "WLM", str(server.port), str(server.port)])
    assert exit_info.value.code == 2
    assert "is not a host: give the host first, then the port" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _no_association(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["query", *argv]) == 3
    err = capsys.readouterr().err
    assert err.startswith("wlmserver query: ") and err.count("\n") == 1
    return err.removeprefix("wlmserver query: ").strip()


def test_connection_refused_and_unknown_host(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    message = _no_association(capsys, "-aec", "WLM", str(port))
    assert message == f"connection refused: is a server running on 127.0.0.1:{port}?"
    message = _no_association(capsys, "-aec", "WLM", "no-such-host.invalid", "104")
    assert message.startswith("cannot find the host 'no-such-host.invalid'")


PERMANENT_USER = "(Result: Rejected Permanent, Source: Service User)"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((1, 1, 7), f"Called AE Title Not Recognized {PERMANENT_USER}"),
        ((1, 1, 3), f"Calling AE Title Not Recognized {PERMANENT_USER}"),
        ((1, 1, 1), f"No Reason Given {PERMANENT_USER}"),
        ((1, 1, 2), "Application Context Name Not Supported"),
        ((2, 2, 1), "No Reason Given (Result: Rejected Transient, Source: Service Provider (ACSE"),
        ((1, 2, 2), "Protocol Version Not Supported (Result: Rejected Permanent, Source: Servic"),
        ((2, 3, 1), "Temporary Congestion (Result: Rejected Transient, Source: Service Provider"),
        ((2, 3, 2), "Local Limit Exceeded (Result: Rejected Transient, Source: Service Provider"),
    ],
)
def test_reject_reasons_in_findscus_words(args: tuple[int, int, int], reason: str) -> None:
    assert client.reject_reason(*args).startswith(reason)


def test_rejections_say_why(
    start_server: StartServer, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    message = _no_association(capsys, "-aec", "NOSUCHAE", str(server.port))
    assert message == (
        f"association rejected by 127.0.0.1:{server.port}: Called AE Title Not Recognized "
        "(Result: Rejected Permanent, Source: Service User); the server serves no AE title "
        "'NOSUCHAE' (-aec)"
    )
    scp = AE(ae_title="PICKY")
    scp.add_supported_context(MODALITY_WORKLIST_FIND)
    scp.require_calling_aet = ["FRIEND"]
    listener = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        port = listener.server_address[1]
        message = _no_association(capsys, "-aec", "PICKY", "-aet", "STRANGER", str(port))
    finally:
        listener.shutdown()
    assert "Calling AE Title Not Recognized (Result: Rejected Permanent" in message
    assert message.endswith("the server does not accept the calling AE title 'STRANGER' (-aet)")


@contextmanager
def _raw_peer(answer: bytes | None) -> Iterator[int]:
    """A TCP peer that reads the association request, then sends ``answer`` and closes, or
    (None) says nothing until the client has gone."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)
                time.sleep(0.2)
            else:
                conn.settimeout(10)
                with suppress(OSError):
                    while conn.recv(65536):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        thread.join(timeout=10)
        listener.close()


def test_an_abort_or_no_answer_to_the_association_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    a_abort = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 2])  # source 2 (provider), reason 2
    with _raw_peer(a_abort) as port:
        message = _no_association(capsys, "-aec", "WLM", str(port))
    assert message == (
        f"association aborted by 127.0.0.1:{port} "
        "(Source: Service Provider, Reason: Unexpected PDU)"
    )
    with _raw_peer(None) as port:
        message = _no_association(capsys, "-aec", "WLM", "--timeout", "1", str(port))
    assert message == (
        f"no answer to the association request from 127.0.0.1:{port} within 1 s (--timeout)"
    )
    with _raw_peer(b"") as port:
        message = _no_association(capsys, "-aec", "WLM", str(port))
    assert message == (
        f"127.0.0.1:{port} closed the connection without answering the association request"
    )


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("abort", "no final status: the server aborted the association (Source: Service User)"),
        ("hang", "no final status: no response within 1 s (--timeout); the association was ab"),
    ],
)
def test_a_query_that_ends_without_a_final_status_says_why(
    behaviour: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    release = threading.Event()

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        answer = Dataset()
        answer.PatientID = "P1"
        yield 0xFF00, answer
        if behaviour == "abort":
            event.assoc.abort()
        else:
            release.wait(10)
        yield 0x0000, None

    scp = AE(ae_title="WLM")
    scp.add_supported_context(MODALITY_WORKLIST_FIND)
    listener = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    try:
        port = str(listener.server_address[1])
        assert main(["query", "-aec", "WLM", "--timeout", "1", port]) == 1
    finally:
        release.set()
        listener.shutdown()
    assert f" answers; {why}" in capsys.readouterr().err
