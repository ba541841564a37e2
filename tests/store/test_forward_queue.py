"""The forwarding queue's files: order across a reopen, whole files only, failed/, the
sender's record of its tries, and the MPPS store never taking them for instances."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import make_final, make_mpps
from pydicom.dataset import Dataset

from wlmserver.store.forward import (
    ATTEMPTS_NAME,
    FAILED_NAME,
    DamagedMessage,
    ForwardQueue,
    Kind,
    QueueState,
    Tries,
    forward_folder,
    parse_name,
    queue_state,
)
from wlmserver.store.mpps import MppsStore

UID = "1.2.826.0.1.3680043.10.9999.70"
OTHER = "1.2.826.0.1.3680043.10.9999.71"


def opened(folder: Path) -> ForwardQueue:
    queue = ForwardQueue(folder)
    queue.open()
    return queue


def test_messages_keep_their_order_across_a_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)
    queue.append(Kind.N_CREATE, UID, make_mpps())
    queue.append(Kind.N_SET, UID, make_final())
    again = ForwardQueue(folder)
    assert again.open() == 2
    again.append(Kind.N_CREATE, OTHER, make_mpps())
    pending = again.pending()
    assert [(m.sequence, m.kind, m.uid) for m in pending] == [
        (1, Kind.N_CREATE, UID),
        (2, Kind.N_SET, UID),
        (3, Kind.N_CREATE, OTHER),
    ]
    assert again.read(pending[1]).PerformedProcedureStepStatus == "COMPLETED"
    assert again.read(pending[0]).ScheduledStepAttributesSequence[0].AccessionNumber == "ACC001"


def test_the_sequence_continues_after_the_failed_ones(tmp_path: Path) -> None:
    queue = opened(tmp_path / "forward")
    first = queue.append(Kind.N_CREATE, UID, make_mpps())
    queue.fail(first)
    queue.delete(queue.append(Kind.N_CREATE, OTHER, make_mpps()))
    again = ForwardQueue(tmp_path / "forward")
    assert again.open() == 0
    # after the highest held, failed ones included (a number no file holds may come again)
    assert again.append(Kind.N_SET, UID, make_final()).sequence == 2
    assert again.failed_creates() == {UID}


def test_files_are_whole_private_dicom_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)
    message = queue.append(Kind.N_SET, UID, make_final())
    assert sorted(os.listdir(folder)) == [message.path.name, FAILED_NAME]
    assert message.path.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    dump = subprocess.run(
        ["/usr/bin/dcmdump", str(message.path)], capture_output=True, text=True, check=True
    ).stdout
    assert "MediaStorageSOPInstanceUID" in dump and UID in dump
    assert "PerformedProcedureStepStatus" in dump and "COMPLETED" in dump


def test_an_interrupted_write_leaves_nothing_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("wlmserver.store.dicomwrite.os.fsync", full)  # the file's write
    with pytest.raises(OSError):
        queue.append(Kind.N_CREATE, UID, make_mpps())
    assert os.listdir(folder) == [FAILED_NAME]
    monkeypatch.undo()
    assert queue.append(Kind.N_CREATE, UID, make_mpps()).sequence == 2  # no reordering
    assert queue.usage().count == 1  # the failed one is not counted


def test_temporary_files_of_a_crash_are_removed_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "forward"
    folder.mkdir()
    (folder / f".00000000000000000001-create-{UID}.dcm.ab12cd34.tmp").write_bytes(b"half")
    (folder / "notes.txt").write_text("an administrator's")
    queue = ForwardQueue(folder)
    assert queue.open() == 0
    assert sorted(os.listdir(folder)) == [FAILED_NAME, "notes.txt"]


def test_a_damaged_file_or_one_whose_name_lies_is_refused_by_read(tmp_path: Path) -> None:
    queue = opened(tmp_path / "forward")
    message = queue.append(Kind.N_CREATE, UID, make_mpps())
    lying = message.path.with_name(message.path.name.replace("-create-", "-set-"))
    message.path.rename(lying)
    (renamed,) = queue.pending()
    with pytest.raises(DamagedMessage, match="not what its name says"):
        queue.read(renamed)
    lying.write_bytes(b"not DICOM at all")
    with pytest.raises(DamagedMessage):
        queue.read(renamed)


def test_failed_messages_move_out_of_the_way(tmp_path: Path) -> None:
    queue = opened(tmp_path / "forward")
    create = queue.append(Kind.N_CREATE, UID, make_mpps())
    queue.append(Kind.N_SET, UID, make_final())
    where = queue.fail(create)
    assert where.parent.name == FAILED_NAME and where.exists()
    assert [m.kind for m in queue.pending()] == [Kind.N_SET]
    assert [m.uid for m in queue.failed()] == [UID]
    state = queue.state()
    assert (state.pending, state.failed) == (1, 1) and state.oldest is not None


def test_state_of_an_mpps_folder(tmp_path: Path) -> None:
    assert queue_state(tmp_path) is None  # never forwarded
    queue = opened(forward_folder(tmp_path))
    assert queue_state(tmp_path) == QueueState(0, None, 0)
    queue.append(Kind.N_CREATE, UID, Dataset())
    state = queue_state(tmp_path)
    assert state is not None and state.pending == 1
    assert state.describe().startswith("1 queued (oldest 0 s ago)")


def test_the_mpps_store_does_not_read_the_queue(tmp_path: Path) -> None:
    queue = opened(forward_folder(tmp_path))
    queue.append(Kind.N_CREATE, UID, make_mpps())
    store = MppsStore(tmp_path)
    assert store.load() == 0
    assert len(queue.pending()) == 1  # and leaves it alone


@pytest.mark.parametrize(
    "name",
    [
        "1-create-1.2.3.dcm",  # not twenty digits
        "00000000000000000001-delete-1.2.3.dcm",
        "00000000000000000001-create-1.02.3.dcm",  # not a valid UID
        "00000000000000000001-create-1.2.3.dcm.tmp",
    ],
)
def test_other_names_are_not_messages(name: str) -> None:
    assert parse_name(Path(name)) is None


# -- the sender's record of its tries (attempts.json)


def test_tries_survive_a_reopen_and_leave_with_their_message(tmp_path: Path) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)
    create = queue.append(Kind.N_CREATE, UID, make_mpps())
    other = queue.append(Kind.N_CREATE, OTHER, make_mpps())
    assert queue.tries(create) is None and not (folder / ATTEMPTS_NAME).exists()
    queue.record(create, Tries(2, 100.0, 104.0, 1, "status 0x0110"), settled=90.0)
    queue.record(other, Tries(1, 101.0, 102.0))
    assert (folder / ATTEMPTS_NAME).stat().st_mode & 0o777 == 0o600
    again = opened(folder)
    assert again.tries(create) == Tries(2, 100.0, 104.0, 1, "status 0x0110")
    assert again.last_settled == 90.0
    assert again.state().retrying == 2
    again.delete(create)
    again.fail(other)  # moved back by hand, it starts again
    assert again.tries(create) is None and again.tries(other) is None
    assert not (folder / ATTEMPTS_NAME).exists()  # nothing being retried: no record
    assert sorted(os.listdir(folder)) == [FAILED_NAME]  # and no temporary file


def test_tries_of_messages_gone_meanwhile_are_dropped_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)
    gone = queue.append(Kind.N_CREATE, UID, make_mpps())
    kept = queue.append(Kind.N_SET, UID, make_final())
    queue.record(gone, Tries(1, 1.0, 2.0))
    queue.record(kept, Tries(1, 1.0, 2.0))
    gone.path.unlink()  # an administrator's doing, or a crash after the delete
    again = opened(folder)
    assert again.tries(kept) is not None
    assert json.loads((folder / ATTEMPTS_NAME).read_text())["messages"].keys() == {kept.path.name}


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("not json", True),
        ('{"format": 2, "messages": {}}', True),
        ('{"format": 1, "messages": {"x": {"count": 1}}}', False),  # an entry not a record
    ],
)
def test_an_unreadable_record_costs_the_schedule_only(
    tmp_path: Path, text: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "forward"
    queue = opened(folder)
    message = queue.append(Kind.N_CREATE, UID, make_mpps())
    (folder / ATTEMPTS_NAME).write_text(text)
    again = ForwardQueue(folder)
    assert again.open() == 1  # the message is there
    assert again.tries(message) is None
    assert again.state().retrying == 0
    assert ("cannot be read" in caplog.text) is warned


def test_a_record_that_cannot_be_written_is_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = opened(tmp_path / "forward")
    message = queue.append(Kind.N_CREATE, UID, make_mpps())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("wlmserver.store.forward.os.replace", full)
    queue.record(message, Tries(1, 1.0, 2.0))
    queue.record(message, Tries(2, 1.0, 3.0))
    assert queue.tries(message) == Tries(2, 1.0, 3.0)
    warnings = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert sorted(os.listdir(queue.folder)) == sorted([FAILED_NAME, message.path.name])


def test_the_sender_sees_what_was_appended_without_listing(tmp_path: Path) -> None:
    queue = opened(tmp_path / "forward")
    queue.append(Kind.N_CREATE, UID, make_mpps())  # before the sender asked: in pending()
    assert queue.take_appended() == []
    second = queue.append(Kind.N_SET, UID, make_final())
    assert queue.take_appended() == [second]
    assert queue.take_appended() == []
