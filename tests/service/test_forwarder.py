"""Forwarding MPPS to a RIS: two wlmservers on loopback, the second one the RIS (its own MPPS
folder); the RIS up, down and coming up, either side restarting, duplicates after a crash,
refusals."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import make_final, make_mpps, until
from pydicom.dataset import Dataset
from pynetdicom import AE

from wlmserver.config import Config
from wlmserver.config.forward import ForwardTarget
from wlmserver.matching.mpps import PpsStatus, StepKey
from wlmserver.service.forwarder import Backoff
from wlmserver.service.server import MODALITY_PERFORMED_PROCEDURE_STEP, WorklistServer
from wlmserver.store.forward import ForwardQueue, Kind, forward_folder

UID = "1.2.826.0.1.3680043.10.9999.80"
OTHER = "1.2.826.0.1.3680043.10.9999.81"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")

Start = Callable[..., WorklistServer]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start a server: ``start("wlm", forward_to=port)`` forwards to ``RIS@127.0.0.1:port``;
    ``start("ris", port=port)`` is the RIS. Each has its own database root under tmp_path;
    stopped afterwards (a stopped one may be started again under the same name)."""
    servers: list[WorklistServer] = []

    def run(name: str, port: int = 0, forward_to: int | None = None) -> WorklistServer:
        root = tmp_path / name
        (root / ("WLM" if forward_to is not None else "RIS")).mkdir(parents=True, exist_ok=True)
        config = Config(
            data_files_path=root,
            port=port,
            bind="127.0.0.1",
            rescan_interval=0,
            mpps_folder=tmp_path / f"{name}-mpps",
            mpps_forward=(
                ForwardTarget("RIS", "127.0.0.1", forward_to) if forward_to is not None else None
            ),
        )
        server = WorklistServer(
            config, forward_backoff=Backoff(0.05, 0.2), forward_idle_release=0.2
        )
        server.start()
        servers.append(server)
        return server

    yield run
    for server in reversed(servers):  # the forwarding one first: it releases towards the RIS
        server.stop()


def send(port: int, *requests: tuple[str, Dataset, str], called: str = "WLM") -> list[int]:
    """A modality: N-CREATE / N-SET on one association; the statuses."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    statuses = []
    try:
        for kind, ds, uid in requests:
            if kind == "create":
                status, _ = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
            else:
                status, _ = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
            statuses.append(int(status.Status))
    finally:
        assoc.release()
    return statuses


def exam(uid: str = UID) -> list[tuple[str, Dataset, str]]:
    return [("create", make_mpps(), uid), ("set", make_final(), uid)]


def drained(server: WorklistServer) -> Callable[[], bool]:
    def check() -> bool:
        assert server.forwarder is not None
        return server.forwarder.state().pending == 0

    return check


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wlmserver")


def test_the_ris_receives_the_create_then_the_set(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    ris = start("ris")
    wlm = start("wlm", forward_to=ris.port)
    assert send(wlm.port, *exam()) == [0x0000, 0x0000]
    # one association for both, released once idle (0.2 s here)
    assert until(lambda: messages(caplog, "association WLMSERVER -> RIS"), 10)
    (association,) = messages(caplog, "association WLMSERVER -> RIS")
    assert "released" in association
    assert until(lambda: ris.mpps.steps.status(STEP) is PpsStatus.COMPLETED, 10)
    assert until(drained(wlm), 5)
    assert wlm.forwarder is not None
    assert (wlm.forwarder.delivered, wlm.forwarder.refused) == (2, 0)  # an N-SET first: 0x0112
    assert ris.mpps.uids() == [UID]
    received = ris.mpps.get(UID)
    assert received is not None and received.PerformedSeriesSequence[0].ProtocolName == "HEAD"


def test_nothing_is_lost_while_the_ris_is_down_and_nothing_is_sent_twice(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    wlm = start("wlm", forward_to=port)
    assert send(wlm.port, *exam(), *exam(OTHER)) == [0] * 4  # the modality is not kept waiting
    assert wlm.forwarder is not None
    assert wlm.forwarder.state().pending == 4
    assert until(lambda: messages(caplog, "unavailable"), 5)
    until(lambda: False, 0.5)  # several retries meanwhile
    assert len(messages(caplog, "unavailable")) == 1  # once, not per retry
    assert "refused" in messages(caplog, "unavailable")[0]
    assert " queued; retrying" in messages(caplog, "unavailable")[0]
    ris = start("ris", port=port)
    assert until(drained(wlm), 10)
    assert sorted(ris.mpps.uids()) == [UID, OTHER]
    assert ris.mpps.steps.status(STEP) is PpsStatus.COMPLETED
    assert (wlm.forwarder.delivered, wlm.forwarder.already_delivered) == (4, 0)
    assert len(messages(caplog, "available again")) == 1


def test_a_restart_resumes_from_the_queue(tmp_path: Path, start: Start) -> None:
    port = free_port()
    wlm = start("wlm", forward_to=port)
    assert send(wlm.port, *exam()) == [0, 0]
    wlm.stop()
    queued = sorted(p.name for p in forward_folder(tmp_path / "wlm-mpps").glob("*.dcm"))
    assert [name.split("-")[1] for name in queued] == ["create", "set"]
    ris = start("ris", port=port)
    again = start("wlm", forward_to=port)
    assert until(drained(again), 10)
    assert ris.mpps.steps.status(STEP) is PpsStatus.COMPLETED
    assert again.forwarder is not None and again.forwarder.delivered == 2


def test_messages_acknowledged_before_a_crash_are_sent_again_and_taken_as_delivered(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    ris = start("ris")
    assert send(ris.port, *exam(), called="RIS") == [0, 0]  # the RIS acknowledged both ...
    queue = ForwardQueue(forward_folder(tmp_path / "wlm-mpps"))
    queue.open()  # ... and the crash came before the files were deleted
    queue.append(Kind.N_CREATE, UID, make_mpps())
    queue.append(Kind.N_SET, UID, make_final())
    queue.append(Kind.N_CREATE, OTHER, make_mpps())  # and a new one after them
    wlm = start("wlm", forward_to=ris.port)
    assert until(drained(wlm), 10)
    assert wlm.forwarder is not None
    assert (wlm.forwarder.already_delivered, wlm.forwarder.delivered) == (2, 1)
    assert wlm.forwarder.refused == 0 and not queue.failed()
    assert sorted(ris.mpps.uids()) == [UID, OTHER]  # one instance each
    said = messages(caplog, "taken as delivered")
    assert len(said) == 2 and "0x0111" in said[0] and "A710H" in said[1]


def test_a_message_refused_for_good_goes_to_failed_and_the_queue_goes_on(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    ris = start("ris")
    queue = ForwardQueue(forward_folder(tmp_path / "wlm-mpps"))
    queue.open()
    queue.append(Kind.N_CREATE, UID, make_mpps(Modality=None))  # Type 1 missing: 0x0120
    queue.append(Kind.N_SET, UID, make_final())  # cannot succeed after that
    queue.append(Kind.N_CREATE, OTHER, make_mpps())
    wlm = start("wlm", forward_to=ris.port)
    assert until(drained(wlm), 10)
    assert ris.mpps.uids() == [OTHER]
    assert [(m.kind, m.uid) for m in queue.failed()] == [(Kind.N_CREATE, UID), (Kind.N_SET, UID)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert f"N-CREATE {UID}" in errors[0] and "0x0120" in errors[0] and "Modality" in errors[0]
    assert f"N-SET {UID}" in errors[1] and "its N-CREATE was refused" in errors[1]
    assert wlm.forwarder is not None and wlm.forwarder.refused == 2
    # and the modality's exams still pass behind them
    assert send(wlm.port, ("create", make_mpps(), "1.2.826.0.1.3680043.10.9999.82")) == [0]
    assert until(lambda: len(ris.mpps) == 2, 10)
