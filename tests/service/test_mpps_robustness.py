"""MPPS and forwarding that can neither lose nor swamp (issue 20, findings 1-4), over the
network: pynetdicom as the modality, in-process servers on free loopback ports (a second one
as the RIS). Bounded waits on outcomes, never fixed sleeps."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, echo, find, make_final, make_mpps, until, write_wl
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from wlmserver import logs
from wlmserver.config import Config
from wlmserver.matching.mpps import MPPS_SOP_CLASS, PpsStatus, StepKey
from wlmserver.service.server import MODALITY_PERFORMED_PROCEDURE_STEP, WorklistServer
from wlmserver.store import dicomwrite
from wlmserver.store import forward as forward_module
from wlmserver.store import mpps as mpps_module
from wlmserver.store.dicomwrite import encode
from wlmserver.store.forward import STAGED

UID = "1.2.826.0.1.3680043.10.9999.90"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send(port: int, *requests: tuple[str, Dataset, str]) -> list[tuple[int, str]]:
    """A modality: N-CREATE / N-SET on one association; (status, ErrorComment) each."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    ae.maximum_pdu_size = 0
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    assert assoc.is_established
    answers = []
    try:
        for kind, ds, uid in requests:
            if kind == "create":
                status, _ = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
            else:
                status, _ = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
            assert status is not None, "no response"
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return answers


def exam(uid: str = UID) -> list[tuple[str, Dataset, str]]:
    return [("create", make_mpps(), uid), ("set", make_final(), uid)]


@pytest.fixture
def limited_log(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Handler]:
    """The log as ``wlmserver`` installs it: rate-limited (20 of a kind a minute)."""
    caplog.set_level(logging.INFO, logger="wlmserver")
    logs.install(caplog.handler)
    yield caplog.handler
    caplog.handler.filters.clear()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("wlmserver") and r.levelno >= logging.WARNING
    ]


# --------------------------------------------------------------- finding 1: bounds


def _padded(size: int) -> Dataset:
    ds = make_mpps()
    ds.add_new(0x00091010, "LO", "WLMTEST")  # private creator
    ds.add_new(0x00091011, "UN", b"\0" * size)
    return ds


def test_an_oversized_request_is_refused_before_it_is_decoded(
    start_server: StartServer, limited_log: logging.Handler, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    answers = send(
        server.port,
        ("create", _padded(1_100_000), UID),  # over the default 1 MiB
        *(("create", _padded(1_100_000), f"1.2.3.{n}") for n in range(1, 31)),
        ("create", make_mpps(), UID),
    )
    assert answers[0] == (0x0213, "attribute list over 1048576 bytes (--max-mpps-size)")
    assert answers[-1] == (0x0000, "")
    assert server.mpps.uids() == [UID]
    lines = [r.getMessage() for r in warnings_of(caplog)]
    assert 1 <= len(lines) <= 21, lines  # rate-limited: 31 refusals, at most 20 lines + 1
    assert all("refused at a limit, status 0x0213" in line for line in lines)


def test_an_instance_cannot_grow_past_its_limit_but_can_still_end(
    start_server: StartServer,
) -> None:
    server = start_server(max_mpps_instance_size=64 * 1024)
    grow = Dataset()
    grow.add_new(0x00091010, "LO", "WLMTEST")
    grow.add_new(0x00091011, "UN", b"\0" * 70_000)
    answers = send(server.port, ("create", make_mpps(), UID), ("set", grow, UID))
    assert answers[1] == (0x0213, "instance over 65536 bytes (--max-mpps-instance-size)")
    size = server.mpps.path(UID).stat().st_size
    assert size < 4096  # unchanged
    assert send(server.port, ("set", make_final(), UID)) == [(0x0000, "")]
    assert server.mpps.steps.status(STEP) is PpsStatus.COMPLETED


@pytest.mark.parametrize("limit", ["count", "bytes"])
def test_a_full_mpps_folder_refuses_new_instances_and_keeps_every_one(
    start_server: StartServer, limit: str
) -> None:
    options = {"max_mpps_instances": 2} if limit == "count" else {"max_mpps_folder_size": 2000}
    server = start_server(**options)
    uids = [f"1.2.826.0.1.3680043.10.9999.91.{n}" for n in range(4)]
    answers = send(server.port, *(("create", make_mpps(), uid) for uid in uids))
    assert [status for status, _ in answers] == [0, 0, 0x0213, 0x0213]
    assert "MPPS folder full" in answers[2][1]
    assert sorted(server.mpps.uids()) == uids[:2]
    # the exams in progress still end
    assert send(server.port, ("set", make_final(), uids[0])) == [(0, "")]
    assert sorted(os.listdir(server.mpps.folder)) == sorted(f"{u}.dcm" for u in uids[:2])


def test_request_captures_stop_at_their_limit_and_the_queries_are_answered(
    start_server: StartServer, db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "a.wl")
    captures = tmp_path / "captures"
    server = start_server(request_file_path=captures, max_capture_files=2)
    query = Dataset()
    query.PatientID = ""
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        for _ in range(4):
            assert [s for s, _ in find(server.port, query)][-1] == 0x0000
    assert len(os.listdir(captures)) == 2
    said = [r.getMessage() for r in warnings_of(caplog)]
    assert len(said) == 2 and all("--max-capture-files" in m for m in said)


# --------------------------------------------------------------- finding 3: readable back


def test_an_unknown_character_set_is_refused_not_lost_at_the_next_start(
    start_server: StartServer, db: Path
) -> None:
    server = start_server()
    answers = send(server.port, ("create", make_mpps(SpecificCharacterSet="ISO_IR 999"), UID))
    assert answers == [(0x0106, "SpecificCharacterSet: 'ISO_IR 999' is not a known term")]
    assert server.mpps.steps.status(STEP) is None and not server.mpps.path(UID).exists()
    # the modality corrects it; what it is told was stored is there after a restart
    assert send(server.port, ("create", make_mpps(SpecificCharacterSet="ISO_IR 100"), UID)) == [
        (0, "")
    ]
    server.stop()
    again = start_server()
    assert again.mpps.steps.status(STEP) is PpsStatus.IN_PROGRESS
    assert send(again.port, ("set", make_final(), UID)) == [(0, "")]


# --------------------------------------------------------------- finding 4: forwarding

Start = Callable[..., WorklistServer]


@pytest.fixture
def start(start_mpps: Start) -> Start:
    """The MPPS servers of :func:`conftest.start_mpps`."""
    return start_mpps


def _disk_full_at(target: str) -> Callable[..., None]:
    """The atomic writer, with no space left for the forward message or for the instance."""
    real = dicomwrite.write_bytes_atomically

    def write(final: Path, data: bytes, verify: Callable[[Path], object] | None = None) -> None:
        if final.name.endswith(STAGED) == (target == "message"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(final, data, verify)

    return write


@pytest.mark.parametrize("target", ["message", "instance"])
def test_no_space_left_is_a_failure_to_the_modality_and_nothing_reaches_the_ris(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    caplog.set_level(logging.INFO, logger="wlmserver")
    port = free_port()
    wlm = start("wlm", forward_to=port)
    assert send(wlm.port, ("create", make_mpps(), UID)) == [(0, "")]
    fault = _disk_full_at(target)
    monkeypatch.setattr(forward_module, "write_bytes_atomically", fault)
    monkeypatch.setattr(mpps_module, "write_bytes_atomically", fault)
    (answer,) = send(wlm.port, ("set", make_final(), UID))
    assert answer[0] == 0x0213 and "no space left on the disk" in answer[1]
    assert not [r for r in caplog.records if "NOT queued" in r.getMessage()]
    errors = [
        r for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("wlmserver")
    ]  # (pynetdicom says once that the RIS, not started yet, refused the connection)
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    assert wlm.mpps.steps.status(STEP) is PpsStatus.IN_PROGRESS
    monkeypatch.undo()  # space again: the modality's retry
    assert send(wlm.port, ("set", make_final(), UID)) == [(0, "")]
    ris = start("ris", port=port)
    assert wlm.forwarder is not None
    assert until(lambda: wlm.forwarder.state().pending == 0, 15)  # type: ignore[union-attr]
    assert until(lambda: ris.mpps.steps.status(STEP) is PpsStatus.COMPLETED, 10)
    assert (wlm.forwarder.delivered, wlm.forwarder.already_delivered) == (2, 0)


def test_a_full_forwarding_queue_refuses_and_flows_again(start: Start) -> None:
    port = free_port()
    wlm = start("wlm", forward_to=port, max_forward_messages=2)
    other = "1.2.826.0.1.3680043.10.9999.92"
    answers = send(wlm.port, *exam(), ("create", make_mpps(), other))
    assert [s for s, _ in answers] == [0, 0, 0x0213]
    assert "forwarding queue full" in answers[2][1]
    assert wlm.mpps.uids() == [UID]  # not stored either: the RIS would never hear of it
    ris = start("ris", port=port)
    assert wlm.forwarder is not None
    assert until(lambda: wlm.forwarder.state().pending == 0, 15)  # type: ignore[union-attr]
    assert send(wlm.port, ("create", make_mpps(), other)) == [(0, "")]
    assert until(lambda: sorted(ris.mpps.uids()) == sorted([UID, other]), 10)


# --------------------------------------------------------------- finding 2: restarts


def make_instances(
    folder: Path,
    count: int,
    status: str = "IN PROGRESS",
    prefix: str = "1.2.826.0.1.3680043.10.9999.5.",
) -> list[str]:
    """``count`` instance files as the store writes them (faster than N-CREATEs), each
    performing step ``S<n>``; with ``count`` 1, the step ``SPS001`` of the default entry."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = []
    for n in range(count):
        uid = f"{prefix}{n}"
        sps = "SPS001" if count == 1 else f"S{n}"
        ds = make_mpps(
            steps=[{"ScheduledProcedureStepID": sps}], PerformedProcedureStepStatus=status
        )
        ds.SOPClassUID = MPPS_SOP_CLASS
        ds.SOPInstanceUID = uid
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        (folder / f"{uid}.dcm").write_bytes(encode(ds))
        uids.append(uid)
    return uids


def _first_answer(call: Callable[[], object], seconds: float) -> float:
    """Seconds until ``call`` succeeds (retried while the port refuses), within a bound."""
    started = time.monotonic()
    assert until(lambda: _succeeds(call), seconds), f"no answer within {seconds} s"
    return time.monotonic() - started


def _succeeds(call: Callable[[], object]) -> bool:
    try:
        return bool(call())
    except (AssertionError, OSError):
        return False


@pytest.mark.parametrize("index_file", [False, True])
def test_a_large_mpps_folder_does_not_delay_the_port(
    db: Path, tmp_path: Path, index_file: bool
) -> None:
    write_wl(db / "WLM" / "a.wl")
    folder = tmp_path / "mpps"
    make_instances(folder, 4000)
    if index_file:  # a restart after a clean stop
        store = mpps_module.MppsStore(folder)
        store.load()
        assert store.save_index()
    port = free_port()
    server = WorklistServer(
        Config(
            data_files_path=db, port=port, bind="127.0.0.1", rescan_interval=0, mpps_folder=folder
        )
    )
    started = time.monotonic()
    server.start(wait=False)
    try:
        query = Dataset()
        query.PatientID = ""
        echoed = _first_answer(lambda: echo(port) == 0, 10)
        found = _first_answer(lambda: find(port, query)[-1][0] == 0, 20)
        total = time.monotonic() - started
        assert echoed < 1.5, echoed  # the old server read every instance first: ~4 s here
        assert total < 3.0, total
        assert len(server.mpps) == 4000 and found < 3.0
    finally:
        server.stop()


def test_a_query_during_the_load_waits_for_the_reported_statuses(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_wl(db / "WLM" / "a.wl")  # its step is COMPLETED by an MPPS: hidden by default
    folder = tmp_path / "mpps"
    make_instances(folder, 1, status="COMPLETED")
    real = mpps_module.index_row
    release = threading.Event()

    def slow(*args: Any) -> Any:
        release.wait(20)  # the load is held here until the query was sent
        return real(*args)

    monkeypatch.setattr(mpps_module, "index_row", slow)
    port = free_port()
    server = WorklistServer(
        Config(
            data_files_path=db, port=port, bind="127.0.0.1", rescan_interval=0, mpps_folder=folder
        )
    )
    server.start(wait=False)
    try:
        assert _first_answer(lambda: echo(port) == 0, 10) < 5  # answered while loading
        query = Dataset()
        query.PatientID = ""
        answers: list[Any] = []
        asker = threading.Thread(target=lambda: answers.extend(find(port, query)))
        asker.start()
        assert until(lambda: server.port and not server.mpps.ready.is_set(), 5)
        release.set()
        asker.join(20)
        # never the completed step answered as still to do: the query waited for the load
        assert [status for status, _ in answers] == [0x0000]
        assert len(server.mpps) == 1
    finally:
        release.set()
        server.stop()


def test_finished_instances_past_retention_move_to_the_archive(
    start_server: StartServer, db: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mpps"
    server = start_server(mpps_folder=folder, retention_days=30)
    old = "1.2.826.0.1.3680043.10.9999.93"
    assert (
        send(
            server.port,
            *exam(),
            ("create", make_mpps(steps=[{"ScheduledProcedureStepID": "SPS002"}]), old),
            ("set", make_final(PerformedProcedureStepEndDate="20200101"), old),
        )
        == [(0, "")] * 4
    )
    assert server.mpps_retention is not None
    assert server.mpps_retention.run() == 1
    assert (folder / "archive" / f"{old}.dcm").is_file()
    assert server.mpps.uids() == [UID]
    server.stop()
    again = start_server(mpps_folder=folder, retention_days=30)
    assert again.mpps.uids() == [UID]  # the archive is never read back
    assert not [n for n in os.listdir(folder) if n == f"{old}.dcm"]


# --------------------------------------------------------------- the options


def test_the_bounds_are_options_with_their_defaults(db: Path) -> None:
    from wlmserver.config.loader import load

    default = load(["-dfp", str(db)]).config
    assert (default.max_mpps_size, default.max_mpps_instance_size) == (1048576, 4194304)
    assert (default.max_mpps_instances, default.max_mpps_folder_size) == (100_000, 4 << 30)
    assert (default.max_forward_messages, default.max_forward_size) == (20_000, 1 << 30)
    assert (default.max_capture_files, default.max_capture_size) == (10_000, 64 << 20)
    assert default.mpps_retention is None
    given = load(
        [
            "-dfp", str(db), "--max-mpps-size", "65536", "--max-mpps-folder-size", "10",
            "--max-forward-size", "0.5", "--max-capture-files", "3",
            "--retention-days", "90",
        ]
    ).config  # fmt: skip
    assert (given.max_mpps_size, given.max_mpps_folder_size) == (65536, 10 << 20)
    assert (given.max_forward_size, given.max_capture_files) == (1 << 19, 3)
    assert given.mpps_retention == 90  # follows --retention-days


@pytest.mark.parametrize(
    "argv",
    [["--mpps-retention-days", "30"], ["--retention-days", "90", "--mpps-retention-days", "30"]],
)
def test_mpps_retention_cannot_archive_a_step_still_served(db: Path, argv: list[str]) -> None:
    from wlmserver.config.loader import load
    from wlmserver.config.options import UsageError

    with pytest.raises(UsageError, match="--mpps-retention-days 30 needs --retention-days"):
        load(["-dfp", str(db), *argv])
