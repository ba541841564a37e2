"""What the MPPS store acknowledges is durable and readable back (issue 20, findings 3 and 4):
a request is stored with its forward message in one durable step, a fault at any write (no
space left, the process killed) stores neither and queues nothing, and whatever was accepted
reads back at the next start. Faults are injected at each write of the atomic writer."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_final, make_mpps
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from wlmserver.matching.mpps import MppsError, MppsStatus, PpsStatus, StepKey
from wlmserver.store import dicomwrite
from wlmserver.store import forward as forward_module
from wlmserver.store import mpps as mpps_module
from wlmserver.store.forward import STAGED, ForwardQueue, Kind, forward_folder
from wlmserver.store.mpps import MppsStore

UID = "1.2.826.0.1.3680043.10.9999.200"
OTHER = "1.2.826.0.1.3680043.10.9999.201"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")
ROOT = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """The process stops here (as kill -9 would: nothing after it runs, no cleanup)."""


def open_store(folder: Path, forwarding: bool = True) -> MppsStore:
    """A store as the server makes it (with its forwarding queue), loaded: a (re)start."""
    queue = ForwardQueue(forward_folder(folder)) if forwarding else None
    store = MppsStore(folder, queue=queue)
    store.load()
    return store


def queued(store: MppsStore) -> list[tuple[Kind, str]]:
    assert store.queue is not None
    return [(m.kind, m.uid) for m in store.queue.pending()]


def staged_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(forward_folder(folder)) if n.endswith(STAGED))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "mpps"


# --------------------------------------------------------------- faults at each write

Fault = Callable[..., None]


def faulty_writer(which: str, point: str, error: BaseException) -> Fault:
    """The atomic writer, failing for the message (``which="message"``) or the instance:
    before anything is written (``open``), once the temporary file is written and synced but
    before the rename (``sync``), or after the file is in place (``after``)."""
    real = dicomwrite.write_bytes_atomically

    def write(final: Path, data: bytes, verify: Callable[[Path], object] | None = None) -> None:
        is_message = final.name.endswith(STAGED)
        if is_message != (which == "message"):
            real(final, data, verify)
            return
        if point == "open":
            raise error

        def then_fail(path: Path) -> None:
            if verify is not None:
                verify(path)
            raise error

        if point == "sync":
            real(final, data, then_fail)
            return
        real(final, data, verify)
        raise error

    return write


def inject(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    monkeypatch.setattr(forward_module, "write_bytes_atomically", fault)
    monkeypatch.setattr(mpps_module, "write_bytes_atomically", fault)


def no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


REQUESTS = ["create", "set"]
WRITES = [("message", "open"), ("message", "sync"), ("instance", "open"), ("instance", "sync")]


def _prepare(folder: Path, request: str) -> MppsStore:
    store = open_store(folder)
    if request == "set":
        store.create(UID, make_mpps())
    return store


def _send(store: MppsStore, request: str) -> None:
    if request == "create":
        store.create(UID, make_mpps())
    else:
        store.set(UID, make_final())


def _expected_before(request: str) -> list[tuple[Kind, str]]:
    return [(Kind.N_CREATE, UID)] if request == "set" else []


@pytest.mark.parametrize("request_kind", REQUESTS)
@pytest.mark.parametrize(("which", "point"), WRITES)
def test_no_space_at_any_write_refuses_and_stores_nothing(
    folder: Path, monkeypatch: pytest.MonkeyPatch, request_kind: str, which: str, point: str
) -> None:
    store = _prepare(folder, request_kind)
    before = sorted(os.listdir(folder))
    inject(monkeypatch, faulty_writer(which, point, no_space()))
    with pytest.raises(MppsError) as caught:
        _send(store, request_kind)
    # never Success: 0x0213 Resource limitation, saying the disk is full
    assert caught.value.status == MppsStatus.RESOURCE_LIMITATION
    assert "no space left" in caught.value.comment
    assert caught.value.internal  # an ERROR line for the administrator
    assert sorted(os.listdir(folder)) == before  # no instance, no temporary file
    assert queued(store) == _expected_before(request_kind) and not staged_files(folder)
    status = store.steps.status(STEP)
    assert status == (None if request_kind == "create" else PpsStatus.IN_PROGRESS)
    monkeypatch.undo()  # the disk has room again: the modality's retry succeeds, once
    _send(store, request_kind)
    again = open_store(folder)
    assert queued(again) == [*_expected_before(request_kind), _kind_uid(request_kind)]
    assert again.forward_of(UID) == again.queue.pending()[-1].sequence  # type: ignore[union-attr]


def _kind_uid(request: str) -> tuple[Kind, str]:
    return (Kind.N_CREATE if request == "create" else Kind.N_SET, UID)


@pytest.mark.parametrize("call", ["open", "fsync", "replace"])
@pytest.mark.parametrize("nth", [1, 2])  # the message's write, then the instance's
def test_no_space_from_the_system_calls_themselves(
    folder: Path, monkeypatch: pytest.MonkeyPatch, call: str, nth: int
) -> None:
    store = open_store(folder)
    calls = {"n": 0}
    real = getattr(os, call)

    def failing(*args: Any, **kwargs: Any) -> Any:
        target = str(args[0]) if args else ""
        # a file's fsync (a folder's, after the rename, cannot fail a write: see dicomwrite)
        a_file = call == "fsync" and stat.S_ISREG(os.fstat(args[0]).st_mode)
        if a_file or target.endswith(".tmp"):
            calls["n"] += 1
            if calls["n"] == nth:
                raise no_space()
        return real(*args, **kwargs)

    class FakeOs:
        def __getattr__(self, name: str) -> Any:
            return failing if name == call else getattr(os, name)

    monkeypatch.setattr(dicomwrite, "os", FakeOs())
    with pytest.raises(MppsError) as caught:
        store.create(UID, make_mpps())
    assert caught.value.status == MppsStatus.RESOURCE_LIMITATION
    monkeypatch.undo()
    assert os.listdir(folder) == ["forward"] and queued(store) == []
    assert not staged_files(folder) and store.usage().count == 0
    assert store.queue is not None and store.queue.usage().count == 0


# --------------------------------------------------------------- a crash between the writes

CRASHES = [
    # where the process stops -> (instance kept, message queued) after the restart
    (("message", "open"), (False, False)),
    (("message", "after"), (False, False)),  # staged, its instance never written
    (("instance", "open"), (False, False)),
    (("instance", "sync"), (False, False)),  # the instance's temporary file left
    (("instance", "after"), (True, True)),  # stored, killed before the message was queued
]


@pytest.mark.parametrize(("where", "kept"), CRASHES)
def test_a_crash_between_the_writes_keeps_both_or_neither(
    folder: Path, monkeypatch: pytest.MonkeyPatch, where: tuple[str, str], kept: tuple[bool, bool]
) -> None:
    store = open_store(folder)
    store.create(OTHER, make_mpps())  # acknowledged before: always kept and queued
    inject(monkeypatch, faulty_writer(*where, Crash()))
    with pytest.raises(Crash):
        store.create(UID, make_mpps())
    monkeypatch.undo()
    again = open_store(folder)  # the restart
    assert (UID in again.uids(), (Kind.N_CREATE, UID) in queued(again)) == kept
    assert queued(again)[0] == (Kind.N_CREATE, OTHER) and OTHER in again.uids()
    assert not staged_files(folder)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    if not kept[0]:  # the modality was not answered: its retry is accepted, and queued once
        again.create(UID, make_mpps())
    final = open_store(folder)
    assert queued(final) == [(Kind.N_CREATE, OTHER), (Kind.N_CREATE, UID)]


KILL_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from conftest import make_final, make_mpps
    from wlmserver.store import dicomwrite, forward, mpps
    from wlmserver.store.forward import STAGED, ForwardQueue, forward_folder
    from wlmserver.store.mpps import MppsStore

    folder, where = Path(sys.argv[1]), sys.argv[2]
    store = MppsStore(folder, queue=ForwardQueue(forward_folder(folder)))
    store.load()
    store.create("1.2.826.0.1.3680043.10.9999.201", make_mpps())
    real = dicomwrite.write_bytes_atomically

    def write(final, data, verify=None):
        if where == "before-instance" and not final.name.endswith(STAGED):
            os.kill(os.getpid(), signal.SIGKILL)
        real(final, data, verify)
        if where == "after-instance" and not final.name.endswith(STAGED):
            os.kill(os.getpid(), signal.SIGKILL)

    forward.write_bytes_atomically = mpps.write_bytes_atomically = write
    store.set("1.2.826.0.1.3680043.10.9999.201", make_final())
    print("not killed")
    """
)


@pytest.mark.parametrize(("where", "kept"), [("before-instance", False), ("after-instance", True)])
def test_kill_9_between_the_writes(folder: Path, where: str, kept: bool) -> None:
    child = subprocess.run(
        [sys.executable, "-c", KILL_CHILD, str(folder), where, str(ROOT / "tests")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    again = open_store(folder)
    final = PpsStatus.COMPLETED if kept else PpsStatus.IN_PROGRESS
    assert again.steps.status(STEP) == final
    expected = [(Kind.N_CREATE, OTHER)] + ([(Kind.N_SET, OTHER)] if kept else [])
    assert queued(again) == expected  # the RIS gets the N-SET only if it was stored
    assert not staged_files(folder)


def test_a_failed_rename_of_the_message_holds_back_what_follows(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(folder)
    assert store.queue is not None
    real = os.replace
    broken = {"on": True}

    def replace(source: Any, target: Any) -> None:
        if broken["on"] and str(source).endswith(STAGED):
            raise OSError(errno.EIO, "Input/output error")
        real(source, target)

    monkeypatch.setattr(forward_module.os, "replace", replace)
    store.create(UID, make_mpps())  # both are on disk: acknowledged
    store.create(OTHER, make_mpps())
    assert store.queue.pending() == []  # nothing is sent ahead of the one not renamed
    broken["on"] = False  # the next look at the queue renames it, and the order holds
    assert queued(store) == [(Kind.N_CREATE, UID), (Kind.N_CREATE, OTHER)]
    monkeypatch.undo()


def test_a_staged_message_left_by_a_crash_is_settled_by_its_instance(folder: Path) -> None:
    store = open_store(folder)
    assert store.queue is not None
    store.create(UID, make_mpps())
    # a crash after the instance's N-SET was stored, before its message was renamed
    staged = store.queue.stage(Kind.N_SET, UID, make_final())
    store.queue.abort(staged)
    orphan = store.queue.stage(Kind.N_SET, OTHER, make_final())  # no such instance
    again = open_store(folder)
    assert queued(again) == [(Kind.N_CREATE, UID)]
    assert not orphan.path.exists()


# --------------------------------------------------------------- accepted means readable back


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_an_unknown_character_set_is_refused_naming_it(folder: Path) -> None:
    store = open_store(folder, forwarding=False)
    with pytest.raises(MppsError) as caught:
        store.create(UID, make_mpps(SpecificCharacterSet="ISO_IR 999"))
    assert caught.value.status == MppsStatus.INVALID_ATTRIBUTE_VALUE
    assert caught.value.comment == "SpecificCharacterSet: 'ISO_IR 999' is not a known term"
    assert caught.value.tags == (0x00080005,)
    assert store.uids() == [] and not store.path(UID).exists()


def test_a_value_that_does_not_decode_is_refused_naming_the_attribute(folder: Path) -> None:
    store = open_store(folder, forwarding=False)
    ds = make_mpps(SpecificCharacterSet="ISO_IR 192")
    ds[0x00100010] = raw(0x00100010, "PN", b"M\xfcller")  # latin-1 bytes, not UTF-8
    with pytest.raises(MppsError) as caught:
        store.create(UID, ds)
    assert caught.value.status == MppsStatus.INVALID_ATTRIBUTE_VALUE
    assert caught.value.comment.startswith("PatientName: not valid in its Specific")
    item = make_mpps().ScheduledStepAttributesSequence[0]
    item[0x00321060] = raw(0x00321060, "LO", b"\xc3")  # cut-off UTF-8 inside an item
    nested = make_mpps(SpecificCharacterSet="ISO_IR 192")
    nested.ScheduledStepAttributesSequence = [item]
    with pytest.raises(MppsError) as caught:
        store.create(UID, nested)
    assert caught.value.comment.startswith("ScheduledStepAttributesSequence[1]>")
    store.create(UID, make_mpps(SpecificCharacterSet="ISO_IR 192", PatientName="Müller"))
    with pytest.raises(MppsError) as caught:
        store.set(UID, make_final(SpecificCharacterSet="ISO_IR 999"))
    assert caught.value.status == MppsStatus.INVALID_ATTRIBUTE_VALUE
    assert store.steps.status(STEP) == PpsStatus.IN_PROGRESS


def test_an_instance_that_would_not_read_back_is_refused(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(folder)
    real = mpps_module.encode
    monkeypatch.setattr(mpps_module, "encode", lambda ds: real(ds)[:-10])  # a damaged write
    with pytest.raises(MppsError) as caught:
        store.create(UID, make_mpps())
    assert caught.value.status == MppsStatus.PROCESSING_FAILURE
    assert caught.value.comment.startswith("the instance would not read back: ")
    assert os.listdir(folder) == ["forward"] and queued(store) == []


CHARSET_CASES = [
    ("ISO_IR 100", "Müller^Jürgen", None),
    ("ISO_IR 192", "Łódź^Zoë", None),
    ("ISO 2022 IR 87", "ヤマダ^タロウ", None),
    ("ISO_IR 100", "Müller", "ISO_IR 192"),  # an N-SET in another character set
    ("ISO_IR 999", "DOE", None),
    ("", "DOE", "ISO_IR 999"),
]


@pytest.mark.parametrize(("charset", "name", "set_charset"), CHARSET_CASES)
def test_what_is_accepted_reads_back_at_the_next_start(
    folder: Path, charset: str, name: str, set_charset: str | None
) -> None:
    store = open_store(folder, forwarding=False)
    accepted = []
    created = make_mpps(PatientName=name, **({"SpecificCharacterSet": charset} if charset else {}))
    try:
        store.create(UID, created)
        accepted.append(PpsStatus.IN_PROGRESS)
        final = make_final(**({"SpecificCharacterSet": set_charset} if set_charset else {}))
        final.CommentsOnThePerformedProcedureStep = "über"
        store.set(UID, final)
        accepted.append(PpsStatus.COMPLETED)
    except MppsError as exc:
        assert exc.status == MppsStatus.INVALID_ATTRIBUTE_VALUE
    again = open_store(folder, forwarding=False)
    assert again.steps.status(STEP) == (accepted[-1] if accepted else None)
    if accepted:
        instance = again.get(UID)
        assert instance is not None and str(instance.PatientName) == name


# --------------------------------------------------------------- the index file


def _many(store: MppsStore, count: int) -> list[str]:
    uids = [f"1.2.826.0.1.3680043.10.9999.3.{n}" for n in range(1, count + 1)]
    for n, uid in enumerate(uids):
        store.create(uid, make_mpps(steps=[{"ScheduledProcedureStepID": f"S{n}"}]))
    return uids


def test_a_restart_reads_only_what_changed_since_the_index_file(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(folder, forwarding=False)
    uids = _many(store, 30)
    assert store.save_index()
    store.set(uids[0], make_final())  # after the index file: a kill -9 now
    (folder / f"{uids[1]}.dcm").unlink()  # removed while the server was down
    with caplog.at_level("INFO", logger="wlmserver.store.mpps"):
        again = open_store(folder, forwarding=False)
    assert "1 files read" in caplog.text
    assert len(again) == 29 and uids[1] not in again.uids()
    assert again.steps.status(STEP._replace(scheduled_procedure_step_id="S0")) is (
        PpsStatus.COMPLETED
    )
    assert _link(again) == _link(_fresh(folder))


def _link(store: MppsStore) -> list[tuple[Any, ...]]:
    return sorted((p.sop_instance_uid, p.status, p.steps, p.started) for p in store.steps)


def _fresh(folder: Path) -> MppsStore:
    (folder / ".mpps-index").unlink(missing_ok=True)
    return open_store(folder, forwarding=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "writable by others"])
def test_a_damaged_index_file_is_not_used(folder: Path, damage: str) -> None:
    store = open_store(folder, forwarding=False)
    _many(store, 5)
    store.save_index()
    index = folder / ".mpps-index"
    if damage == "truncated":
        index.write_bytes(index.read_bytes()[:-7])
    elif damage == "garbage":
        index.write_bytes(b"wlmserver mpps index\n" + os.urandom(200))
    else:
        index.chmod(0o666)
    again = open_store(folder, forwarding=False)
    assert len(again) == 5 and _link(again) == _link(store)


def test_the_instances_are_not_kept_in_memory(folder: Path) -> None:
    import tracemalloc

    store = open_store(folder, forwarding=False)
    big = make_final()
    images = []
    for n in range(2000):  # a final N-SET listing 2,000 images: ~230 KB
        image = Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        image.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.9999.4.{n}"
        images.append(image)
    big.PerformedSeriesSequence[0].ReferencedImageSequence = images
    for uid in _many(store, 20):
        store.set(uid, big)
    store.save_index()
    tracemalloc.start()
    try:
        again = open_store(folder, forwarding=False)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(again) == 20
    assert size < 1_000_000, size  # 4.6 MB of instances; held as Datasets, ~40 MB


# --------------------------------------------------------------- retention


def test_finished_instances_move_to_the_archive_never_deleted(folder: Path) -> None:
    store = open_store(folder)
    assert store.queue is not None
    store.create(UID, make_mpps())
    store.set(UID, make_final(PerformedProcedureStepEndDate="20260101"))
    store.create(OTHER, make_mpps(steps=[{"ScheduledProcedureStepID": "SPS002"}]))  # in progress
    third = "1.2.826.0.1.3680043.10.9999.202"
    store.create(third, make_mpps(steps=[{"ScheduledProcedureStepID": "SPS003"}]))
    store.set(third, make_final(PerformedProcedureStepEndDate="20260101"))
    for message in store.queue.pending():
        if message.uid != third:
            store.queue.delete(message)  # the RIS has these; third's are still queued
    data = store.path(UID).read_bytes()
    assert store.archive_finished("20260102") == 1  # third's messages are still queued
    assert (folder / "archive" / f"{UID}.dcm").read_bytes() == data
    assert sorted(store.uids()) == sorted([OTHER, third])
    assert store.steps.status(STEP) is None
    (folder / f"{UID}.dcm").write_bytes(data)  # an administrator put it back; archived again
    again = open_store(folder)
    assert again.archive_finished("20260102") == 1
    assert (folder / "archive" / f"{UID}.1.dcm").exists()  # never overwritten
    assert sorted(open_store(folder).uids()) == sorted([OTHER, third])


@pytest.fixture(autouse=True)
def _quiet_threads() -> Iterator[None]:
    yield
