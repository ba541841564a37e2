"""Forwarding MPPS to a RIS: two wlmservers on loopback, the second one the RIS (its own MPPS
folder); the RIS up, down and coming up, either side restarting, duplicates after a crash,
refusals. Then a scripted pynetdicom RIS that counts what it receives: down, refusing one
message for now or for good, refusing every message, slower than the timeout, and a restart
of the sender in the middle."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_final, make_mpps, until
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from wlmserver.config.forward import ForwardTarget
from wlmserver.matching.mpps import PpsStatus, StepKey
from wlmserver.service.forwarder import Backoff, Forwarder, GiveUp
from wlmserver.service.server import MODALITY_PERFORMED_PROCEDURE_STEP, WorklistServer
from wlmserver.store.forward import ATTEMPTS_NAME, ForwardQueue, Kind, forward_folder
from wlmserver.tools.check import format_forwarding, forwarding

UID = "1.2.826.0.1.3680043.10.9999.80"
OTHER = "1.2.826.0.1.3680043.10.9999.81"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")

Start = Callable[..., WorklistServer]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start(start_mpps: Start) -> Start:
    """The MPPS servers of :func:`conftest.start_mpps`."""
    return start_mpps


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
    assert f"N-SET {UID}" in errors[1] and "its N-CREATE is in failed/" in errors[1]
    assert wlm.forwarder is not None and wlm.forwarder.refused == 2
    # and the modality's exams still pass behind them
    assert send(wlm.port, ("create", make_mpps(), "1.2.826.0.1.3680043.10.9999.82")) == [0]
    assert until(lambda: len(ris.mpps) == 2, 10)


# -- a scripted RIS: down, refusing one message, refusing all, slow; restarts in the middle

A, B, C = (f"1.2.826.0.1.3680043.10.9999.{n}" for n in (90, 91, 92))
Key = tuple[str, str]  # ("create" | "set", SOP Instance UID)


def _status(code: int, error_id: int | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if error_id is not None:
        status.ErrorID = error_id
    return status


class Ris:
    """A RIS: a pynetdicom MPPS SCP on a free loopback port. It records every request it
    receives, applies each at most once as an MPPS SCP does (a second N-CREATE of an instance
    0x0111, an N-SET of a finished one 0x0110 / A710H, of an unknown one 0x0112), and can
    refuse a message (``refuse``), answer slowly (``delay``, applied after it) or hold an
    answer until told (``hold``)."""

    def __init__(self) -> None:
        self.received: list[Key] = []
        self.applied: list[Key] = []
        self.delay = 0.0
        self.holds: dict[Key, threading.Event] = {}
        self._refusals: dict[Key, tuple[int, int | None]] = {}
        self._refuse_all: int | None = None
        self._status: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self.port = 0

    def start(self, port: int = 0) -> Ris:
        ae = AE(ae_title="RIS")
        # the sender's bare connection while the RIS was down (the log says so once) gets no
        # A-ASSOCIATE-RQ: a pynetdicom SCP waits its ACSE timeout for one
        ae.acse_timeout = 1
        ae.add_supported_context(
            MODALITY_PERFORMED_PROCEDURE_STEP, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        handlers = [(evt.EVT_N_CREATE, self._n_create), (evt.EVT_N_SET, self._n_set)]
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        for hold in self.holds.values():
            hold.set()
        if self._server is not None:
            for assoc in self._server.active_associations:
                assoc.abort()
            self._server.shutdown()
            self._server = None

    def refuse(self, key: Key, status: int, times: int | None = None) -> None:
        """Answer ``status`` to ``key`` (``times`` times; None: until :meth:`accept`)."""
        with self._lock:
            self._refusals[key] = (status, times)

    def refuse_all(self, status: int) -> None:
        with self._lock:
            self._refuse_all = status

    def accept(self) -> None:
        with self._lock:
            self._refusals.clear()
            self._refuse_all = None

    def count(self, key: Key) -> int:
        with self._lock:
            return self.received.count(key)

    def _n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID)
        return self._answer(("create", uid), event.attribute_list)

    def _n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID)
        return self._answer(("set", uid), event.modification_list)

    def _answer(self, key: Key, values: Dataset) -> tuple[int | Dataset, Dataset | None]:
        kind, uid = key
        with self._lock:
            self.received.append(key)
            refusal = self._refusals.get(key)
            if refusal is not None and refusal[1] is not None:
                left = refusal[1] - 1
                if left:
                    self._refusals[key] = (refusal[0], left)
                else:
                    del self._refusals[key]
            code = refusal[0] if refusal is not None else self._refuse_all
            hold = self.holds.get(key)
        if hold is not None:
            hold.wait(20)
        elif self.delay:
            threading.Event().wait(self.delay)  # a slow RIS at work, not a synchronisation
        if code is not None:
            return _status(code), None
        with self._lock:
            if kind == "create":
                if uid in self._status:
                    return 0x0111, None
                self._status[uid] = "IN PROGRESS"
            else:
                now = self._status.get(uid)
                if now is None:
                    return 0x0112, None
                if now != "IN PROGRESS":
                    return _status(0x0110, 0xA710), None
                self._status[uid] = str(values.get("PerformedProcedureStepStatus", now))
            self.applied.append(key)
        return 0x0000, values


@pytest.fixture
def ris() -> Iterator[Callable[..., Ris]]:
    """``ris()`` starts a scripted RIS (``ris(port)`` on that port); stopped afterwards."""
    made: list[Ris] = []

    def start(port: int = 0) -> Ris:
        made.append(Ris().start(port))
        return made[-1]

    yield start
    for each in made:
        each.stop()


Sender = Callable[..., Forwarder]


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Sender]:
    """``sender(port, **options)``: a forwarder to ``RIS@127.0.0.1:port`` sending the queue
    in ``tmp_path/mpps/forward`` (each one a restart on the same folder), quick backoff;
    stopped afterwards."""
    made: list[Forwarder] = []

    def start(port: int, **options: Any) -> Forwarder:
        queue = ForwardQueue(forward_folder(tmp_path / "mpps"))
        queue.open()
        options = {"backoff": Backoff(0.05, 0.2), "idle_release": 0.2, **options}
        forwarder = Forwarder(queue, ForwardTarget("RIS", "127.0.0.1", port), "WLM", **options)
        forwarder.start()
        made.append(forwarder)
        return forwarder

    yield start
    for forwarder in made:
        forwarder.stop()


def queue_exams(forwarder: Forwarder, *uids: str, final: bool = True) -> list[Key]:
    """N-CREATE then (with ``final``) N-SET COMPLETED of each instance, one instance after
    the other; the keys in queue order."""
    keys: list[Key] = []
    for uid in uids:
        assert forwarder.enqueue(Kind.N_CREATE, uid, make_mpps())
        keys.append(("create", uid))
        if final:
            assert forwarder.enqueue(Kind.N_SET, uid, make_final())
            keys.append(("set", uid))
    return keys


def empty(forwarder: Forwarder) -> Callable[[], bool]:
    return lambda: forwarder.state().pending == 0


def no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in ("DOE^JANE", "PID001", "ACC001", "19800101"):
        assert value not in text


def test_a_ris_that_is_down_gets_everything_in_order_once_up(
    ris: Callable[..., Ris], sender: Sender, tmp_path: Path
) -> None:
    port = free_port()
    forwarder = sender(port)
    keys = queue_exams(forwarder, A, B, C)
    assert until(lambda: forwarder._failures >= 3, 10)  # several tries at the RIS meanwhile
    state = forwarder.state()
    assert (state.pending, state.retrying, state.failed) == (6, 0, 0)  # no message to blame
    up = ris(port)
    assert until(empty(forwarder), 10)
    assert up.received == keys == up.applied  # in order, each once
    assert not (forward_folder(tmp_path / "mpps") / ATTEMPTS_NAME).exists()


def test_a_message_refused_for_now_holds_back_its_instance_only(
    ris: Callable[..., Ris], sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    up = ris()
    up.refuse(("create", A), 0x0110)  # until told
    forwarder = sender(up.port)
    keys = queue_exams(forwarder, A, B, C)
    # B and C flow while A waits, and A's N-SET waits with it
    assert until(lambda: ("set", C) in up.applied, 10)
    assert ("set", A) not in up.received and forwarder.state().retrying == 1
    up.accept()  # the RIS recovers
    assert until(empty(forwarder), 10)
    tries = up.count(("create", A))
    assert tries >= 2 and up.received[-2:] == [("create", A), ("set", A)]  # in order
    assert up.count(("set", A)) == 1
    assert sorted(up.applied) == sorted(keys)  # each once
    assert forwarder.queue.failed() == [] and forwarder.refused == 0
    refused = messages(caplog, "not accepted by RIS")
    assert len(refused) == 1 and "0x0110" in refused[0] and "set aside after 10 tries" in refused[0]
    said = messages(caplog, f"N-CREATE {A} to RIS@127.0.0.1:{up.port} after {tries} tries")
    assert len(said) == 1
    no_patient_data(caplog)


def test_a_message_refused_past_the_limit_is_set_aside_with_its_n_sets(
    ris: Callable[..., Ris], sender: Sender, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up = ris()
    up.refuse(("create", A), 0x0213)  # Resource limitation, for this one, for ever
    forwarder = sender(up.port, give_up=GiveUp(tries=3, age=0.0))
    queue_exams(forwarder, A, B)
    assert until(empty(forwarder), 10)
    assert up.count(("create", A)) == 3 and up.count(("set", A)) == 0  # never sent
    assert up.applied == [("create", B), ("set", B)]
    assert [(m.kind, m.uid) for m in forwarder.queue.failed()] == [
        (Kind.N_CREATE, A),
        (Kind.N_SET, A),
    ]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert f"N-CREATE {A}" in errors[0] and "set aside after 3 tries" in errors[0]
    assert "0x0213" in errors[0] and f"N-SET {A}" in errors[1]
    no_patient_data(caplog)
    shown = forwarding(tmp_path / "mpps")
    assert shown is not None and "0 queued, 2 failed (see" in format_forwarding(*shown)


def test_a_ris_refusing_every_message_is_down_not_a_reason_to_set_them_aside(
    ris: Callable[..., Ris], sender: Sender, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up = ris()
    up.refuse_all(0x0110)
    forwarder = sender(up.port, give_up=GiveUp(tries=2, age=0.0))
    keys = queue_exams(forwarder, A, B, final=False)

    def tried(times: int) -> Callable[[], bool]:
        def check() -> bool:
            counts = [forwarder.queue.tries(m) for m in forwarder.queue.pending()]
            return all(t is not None and t.count >= times for t in counts)

        return check

    assert until(tried(3), 10)
    assert forwarder.queue.failed() == []  # past the limit, but the RIS settled nothing
    shown = forwarding(tmp_path / "mpps")  # wlmserver check, from the disk
    assert shown is not None and "2 being retried, 0 failed" in format_forwarding(*shown)
    assert len(messages(caplog, "refused 2 messages in a row")) == 1
    up.accept()
    assert until(empty(forwarder), 10)
    assert up.applied == keys and forwarder.queue.failed() == []
    assert len(messages(caplog, "settles messages again")) == 1


def test_a_message_refused_for_good_is_set_aside_at_once(
    ris: Callable[..., Ris], sender: Sender
) -> None:
    up = ris()
    up.refuse(("create", A), 0x0106)  # Invalid attribute value: no try will do
    forwarder = sender(up.port)
    queue_exams(forwarder, A, B)
    assert until(empty(forwarder), 10)
    assert up.count(("create", A)) == 1 and up.count(("set", A)) == 0
    assert up.applied == [("create", B), ("set", B)]
    assert len(forwarder.queue.failed()) == 2 and forwarder.refused == 2


def test_a_ris_slower_than_the_timeout_applies_nothing_twice(
    ris: Callable[..., Ris], sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    up = ris()
    up.delay = 0.7  # every answer; the forwarder waits 0.6 s at first, then 1.2 s
    forwarder = sender(up.port, timeout=0.6)
    keys = queue_exams(forwarder, A)
    keys += queue_exams(forwarder, B, final=False)
    assert until(empty(forwarder), 20)
    assert sorted(up.applied) == sorted(keys)  # each once
    # one duplicate, of the first message: answered 0x0111 and taken as delivered; then
    # answers were awaited long enough
    assert up.count(("create", A)) == 2
    assert up.count(("set", A)) == up.count(("create", B)) == 1
    assert (forwarder.delivered, forwarder.already_delivered) == (2, 1)
    (late,) = messages(caplog, "no answer from")
    assert f"N-CREATE {A} within 0.6 s" in late and "now awaited 1.2 s" in late
    assert up.received.index(("set", A)) > up.received.index(("create", A), 1)


def test_a_restart_in_the_middle_loses_nothing_and_resends_nothing_acknowledged(
    ris: Callable[..., Ris], sender: Sender, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up = ris()
    up.refuse(("create", A), 0x0110)  # until told
    held = up.holds[("create", C)] = threading.Event()  # its answer in flight at the stop
    first = sender(up.port, timeout=5.0)
    keys = queue_exams(first, A, B, C)
    assert until(lambda: up.count(("create", C)) == 1 and up.count(("create", A)) >= 2, 10)
    first.stop(timeout=0.3)  # aborts the association C's N-CREATE waits on
    held.set()
    assert until(lambda: ("create", C) in up.applied, 10)  # the RIS applied it after all
    queue = ForwardQueue(forward_folder(tmp_path / "mpps"))
    queue.open()
    on_disk = {m.uid: queue.tries(m) for m in queue.pending() if m.kind is Kind.N_CREATE}
    assert set(on_disk) == {A, C}  # B went through; A and C wait, with their tries
    tries_a, tries_c = on_disk[A], on_disk[C]
    assert tries_a is not None and tries_a.count >= 1 and tries_a.next >= tries_a.first
    assert tries_c is not None and tries_c.unanswered == 1
    up.accept()
    again = sender(up.port, timeout=5.0)
    assert until(empty(again), 10)
    assert sorted(up.applied) == sorted(keys)  # each once
    assert up.count(("create", B)) == up.count(("set", B)) == 1  # not sent after its answer
    assert up.count(("set", A)) == up.count(("set", C)) == 1
    assert up.count(("create", C)) == 2  # once unanswered, then 0x0111: taken as delivered
    assert again.already_delivered == 1
    count = tries_a.count + 1  # the tries went on where they were
    assert (
        len(messages(caplog, f"N-CREATE {A} to RIS@127.0.0.1:{up.port} after {count} tries")) == 1
    )
