"""The index: scans, per-file updates, snapshots, AE-title safety, the wlmscpfs lockfile."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_wl

from wlmserver.store.files import FileResult
from wlmserver.store.formats import Formats
from wlmserver.store.index import LockBusy, WorklistStore, is_safe_ae_title
from wlmserver.store.reader import ReadOptions


def _spying(reads: list[str], fail: str = "") -> Formats:
    """The default formats, recording each file read, and failing unexpectedly on ``fail``."""

    class Spy(Formats):
        def read(self, path: Path, **options: Any) -> FileResult:
            reads.append(path.name)
            if path.name == fail:
                raise RecursionError("maximum recursion depth exceeded")
            return super().read(path, **options)

    return Spy()


def _ids(store: WorklistStore, aet: str = "WLM") -> list[str]:
    folder = store.folder(aet)
    assert folder is not None
    return [e.top.PatientID for e in folder.entries]


def test_scan_serves_every_folder_in_answer_order(db: Path) -> None:
    write_wl(
        db / "WLM" / "late.wl", PatientID="LATE", sps=[{"ScheduledProcedureStepStartTime": "1600"}]
    )
    write_wl(
        db / "WLM" / "early.wl",
        PatientID="EARLY",
        sps=[{"ScheduledProcedureStepStartTime": "0800"}],
    )
    write_wl(db / "CT01" / "x.WL", PatientID="CT")
    (db / "notes.txt").write_text("not a folder")
    (db / "WLM" / "readme.txt").write_text("not a worklist file")
    store = WorklistStore(db)
    store.scan()
    assert store.folder_names() == ["CT01", "WLM"]
    assert _ids(store) == ["EARLY", "LATE"]
    assert _ids(store, "CT01") == ["CT"]


def test_same_time_orders_by_file_then_item(db: Path) -> None:
    write_wl(
        db / "WLM" / "b.wl",
        PatientID="B",
        sps=[{"ScheduledProcedureStepID": "1"}, {"ScheduledProcedureStepID": "2"}],
    )
    write_wl(db / "WLM" / "a.wl", PatientID="A")
    store = WorklistStore(db)
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None
    assert [(e.top.PatientID, e.item) for e in folder.entries] == [("A", 0), ("B", 0), ("B", 1)]


def test_update_add_replace_remove(db: Path) -> None:
    store = WorklistStore(db)
    store.scan()
    path = write_wl(db / "WLM" / "a.wl", PatientID="ONE")
    store.update_file(path)
    assert _ids(store) == ["ONE"]
    before = store.folder("WLM")
    write_wl(path, PatientID="TWO", sps=[{}, {"ScheduledProcedureStepID": "X"}])
    store.update_file(path)
    assert _ids(store) == ["TWO", "TWO"]
    assert before is not None and [e.top.PatientID for e in before.entries] == [
        "ONE"
    ]  # snapshots stay
    path.unlink()
    store.update_file(path)  # a vanished file is removed
    assert _ids(store) == []


def test_rescan_rereads_only_changed_files(db: Path) -> None:
    for n in range(3):
        write_wl(db / "WLM" / f"{n}.wl", PatientID=f"P{n}")
    reads: list[str] = []
    store = WorklistStore(db, formats=_spying(reads))
    store.scan()
    reads.clear()
    store.scan()
    assert reads == []
    write_wl(db / "WLM" / "1.wl", PatientID="NEW")
    store.scan()
    assert reads == ["1.wl"]
    assert sorted(_ids(store)) == ["NEW", "P0", "P2"]


def test_bad_file_logged_once_and_others_still_served(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "good.wl", PatientID="GOOD")
    bad = db / "WLM" / "bad.wl"
    bad.write_bytes(b"garbage" * 20)
    store = WorklistStore(db)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.scan()
        store.scan()
        store.scan()
    lines = [r.getMessage() for r in caplog.records if "bad.wl" in r.getMessage()]
    assert len(lines) == 1 and "not served" in lines[0]
    assert _ids(store) == ["GOOD"]
    folder = store.folder("WLM")
    assert folder is not None and folder.rejected == 1
    assert folder.files["bad.wl"].problem


def test_incomplete_file_warning_names_file_and_attribute(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "inc.wl", PatientID=None)
    store = WorklistStore(db)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.scan()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "WLM/inc.wl" in line and "PatientID" in line
    assert _ids(store) == []
    lenient = WorklistStore(db, reject_incomplete=False)
    lenient.scan()
    folder = lenient.folder("WLM")
    assert folder is not None and len(folder.entries) == 1


def test_folders_come_and_go(db: Path) -> None:
    store = WorklistStore(db)
    store.scan()
    write_wl(db / "MR01" / "a.wl")
    store.scan()
    assert store.folder_names() == ["MR01", "WLM"]
    (db / "MR01" / "a.wl").unlink()
    (db / "MR01").rmdir()
    store.scan()
    assert store.folder_names() == ["WLM"]


@pytest.mark.parametrize(
    "aet",
    [
        "..",
        ".",
        "../WLM",
        "WLM/..",
        "/etc",
        "a/b",
        "a\\b",
        "WLM\x00",
        "\x01X",
        "",
        " ",
        "A" * 17,
        "WLM ",
        "ÄÖ",
    ],
)
def test_unsafe_ae_titles_never_reach_the_file_system(db: Path, aet: str) -> None:
    assert not is_safe_ae_title(aet)
    store = WorklistStore(db)
    store.scan()
    assert store.folder(aet) is None
    store.scan_folder(aet)  # refused before any path is built
    assert store.folder_names() == ["WLM"]


def test_a_held_lockfile_is_waited_for(db: Path) -> None:
    lock_path = db / "WLM" / "lockfile"
    lock_path.touch()
    path = write_wl(db / "WLM" / "a.wl", PatientID="LOCKED")
    store = WorklistStore(db, lock_timeout=0.2)
    # a wlmscpfs-era writer holds the exclusive lock (in another process: POSIX locks are
    # per process, so the test forks one)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, signal, wait to be told to release
        with open(lock_path, "r+b") as handle:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
            os.write(write_end, b"x")
            threading.Event().wait(2)
        os._exit(0)
    try:
        assert os.read(read_end, 1) == b"x"
        store.scan()  # a scan defers the folder instead of reading under the writer
        folder = store.folder("WLM")
        assert folder is not None and folder.entries == ()
        with pytest.raises(LockBusy):  # the watcher retries the file later
            store.update_file(path)
    finally:
        os.waitpid(pid, 0)
    store.update_file(path)
    assert _ids(store) == ["LOCKED"]


def _nested_file(path: Path, depth: int) -> Path:
    """A valid worklist file, then a sequence nesting ``depth`` deep appended to it."""
    write_wl(path)
    opening = b"\x40\x00\x60\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    with path.open("ab") as handle:
        handle.write(opening * depth + closing * depth)
    return path


def _scan_in_a_thread(store: WorklistStore) -> None:
    """Scan, failing (not hanging) if anything blocks the scan."""
    done = threading.Event()

    def scan() -> None:
        store.scan()
        done.set()

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    assert done.wait(30), "the scan blocked"


def test_hostile_files_are_each_one_skipped_file(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO, a link to /dev/zero, a folder and 600 nested sequences, all named ``*.wl``:
    each is one file not served, with one log line saying why; the rest is served."""
    folder = db / "WLM"
    write_wl(folder / "good.wl", PatientID="GOOD")
    os.mkfifo(folder / "fifo.wl")
    (folder / "zero.wl").symlink_to("/dev/zero")
    (folder / "dir.wl").mkdir()
    _nested_file(folder / "deep.wl", 600)
    store = WorklistStore(db, follow_links=True)  # /dev/zero is out of the root
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        _scan_in_a_thread(store)
        _scan_in_a_thread(store)
        store.verify()
    assert _ids(store) == ["GOOD"]
    snapshot = store.folder("WLM")
    assert snapshot is not None
    reasons = {name: state.problem for name, state in snapshot.files.items() if not state.entries}
    assert reasons == {
        "fifo.wl": "a FIFO (named pipe), not a regular file: not read",
        "zero.wl": "a character device, not a regular file: not read",
        "dir.wl": "a folder, not a regular file: not read",
        "deep.wl": reasons["deep.wl"],
    }
    assert "nested more than" in str(reasons["deep.wl"])
    for name in reasons:
        lines = [r for r in caplog.records if f"WLM/{name}" in r.getMessage()]
        assert len(lines) == 1, (name, [r.getMessage() for r in lines])
        assert not lines[0].exc_info
    # the same through a file event (the watcher's path)
    store.update_file(folder / "fifo.wl")
    store.update_file(folder / "zero.wl")
    assert _ids(store) == ["GOOD"]
    # by default, the link to /dev/zero is not even followed
    strict = WorklistStore(db)
    _scan_in_a_thread(strict)
    snapshot = strict.folder("WLM")
    assert snapshot is not None and "out of the database root" in str(
        snapshot.files["zero.wl"].problem
    )


def test_a_reader_failing_unexpectedly_skips_one_file(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "a.wl", PatientID="A")
    write_wl(db / "WLM" / "boom.wl", PatientID="B")
    store = WorklistStore(db, formats=_spying([], fail="boom.wl"))
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.scan()
    assert _ids(store) == ["A"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "WLM/boom.wl not served: nested too deeply to read"


def _half(path: Path) -> bytes:
    whole = write_wl(path, PatientID="HALF").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole


def test_a_file_becoming_whole_within_the_settle_time_is_no_warning(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = db / "WLM" / "w.wl"
    store = WorklistStore(db, settle_time=2.0)
    store.scan()
    whole = _half(path)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.update_file(path)  # read while cut short: not served, not warned about
        snapshot = store.folder("WLM")
        assert snapshot is not None and snapshot.files["w.wl"].cut_short
        path.write_bytes(whole)  # the writer's second flush
        assert store.settle(time.monotonic() + 10) is None  # re-read: whole now
    assert _ids(store) == ["HALF"]
    assert caplog.records == []


def test_a_file_still_cut_short_after_the_settle_time_is_warned_about_once(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = db / "WLM" / "w.wl"
    _half(path)
    store = WorklistStore(db, settle_time=2.0)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.scan()
        assert caplog.records == []
        deadline = store.settle()
        assert deadline is not None  # not yet due
        assert caplog.records == []
        assert store.settle(deadline) is None
        store.settle(deadline + 100)
        store.scan()  # unchanged: not read again, not warned again
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("WLM/w.wl not served: cut short (") and "unchanged for 2 s" in line
    assert _ids(store) == []


def test_a_fifo_named_lockfile_does_not_block(db: Path) -> None:
    os.mkfifo(db / "WLM" / "lockfile")
    write_wl(db / "WLM" / "a.wl", PatientID="A")
    store = WorklistStore(db, lock_timeout=0.1)
    _scan_in_a_thread(store)
    assert _ids(store) == ["A"]


def test_a_file_over_the_size_limit_is_not_read(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 200 MB .wl cost 17 s of CPU under the write lock: now it is refused by its size,
    before anything is read (a sparse file: nothing is written either)."""
    write_wl(db / "WLM" / "good.wl", PatientID="GOOD")
    with open(db / "WLM" / "huge.wl", "wb") as handle:
        handle.truncate(200 * 1024 * 1024)
    store = WorklistStore(db, max_file_size=1024 * 1024)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        store.scan()
    assert _ids(store) == ["GOOD"]
    snapshot = store.folder("WLM")
    assert snapshot is not None
    problem = snapshot.files["huge.wl"].problem
    assert problem == "200 MiB, more than the 1 MiB a file may have (--max-file-size): not read"


def test_a_value_over_the_element_limit_refuses_the_file(db: Path) -> None:
    from wlmserver.store.dicomfile import MAX_VALUE_LENGTH

    write_wl(db / "WLM" / "big.wl", PatientComments="x" * (MAX_VALUE_LENGTH + 2))
    store = WorklistStore(db)
    store.scan()
    snapshot = store.folder("WLM")
    assert snapshot is not None and not snapshot.entries
    assert "more than the 1048576 a worklist value may have" in str(
        snapshot.files["big.wl"].problem
    )


def test_links_out_of_the_root_are_not_followed_unless_asked(db: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_wl(outside / "secret.wl", PatientID="OUTSIDE")
    (db / "WLM" / "link.wl").symlink_to(outside / "secret.wl")
    (db / "ROOTLINK").symlink_to(outside)  # a whole AE folder leading out
    write_wl(db / "OTHER" / "inner.wl", PatientID="INNER")
    (db / "WLM" / "inner.wl").symlink_to(db / "OTHER" / "inner.wl")  # inside: served
    store = WorklistStore(db)
    store.scan()
    store.scan_folder("ROOTLINK")
    assert _ids(store) == ["INNER"]
    assert store.folder("ROOTLINK") is None
    snapshot = store.folder("WLM")
    assert snapshot is not None
    assert "out of the database root" in str(snapshot.files["link.wl"].problem)
    trusting = WorklistStore(db, follow_links=True)
    trusting.scan()
    assert sorted(_ids(trusting)) == ["INNER", "OUTSIDE"]
    assert _ids(trusting, "ROOTLINK") == ["OUTSIDE"]


def test_read_resolves_a_path_unless_told_it_is_no_link(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_read(..., is_link=False)`` (a directory entry known to be no symbolic link, in a
    folder checked to lie inside the root) skips resolving the path; a link, or not knowing,
    still resolves it, and a link out of the root is refused."""
    outside = tmp_path / "outside"
    write_wl(outside / "secret.wl", PatientID="OUTSIDE")
    (db / "WLM" / "link.wl").symlink_to(outside / "secret.wl")
    write_wl(db / "WLM" / "plain.wl", PatientID="PLAIN")
    store = WorklistStore(db)
    resolved: list[str] = []
    is_inside = ReadOptions.is_inside

    def spy(options: ReadOptions, path: Path) -> bool:
        resolved.append(Path(path).name)
        return is_inside(options, path)

    monkeypatch.setattr(ReadOptions, "is_inside", spy)
    signature = (0, 0, 0, 0)
    for is_link in (None, True):
        state = store._read(db / "WLM" / "link.wl", signature, None, is_link)
        assert not state.entries and "out of the database root" in str(state.problem)
    for is_link in (None, False):
        state = store._read(db / "WLM" / "plain.wl", signature, None, is_link)
        assert [e.top.PatientID for e in state.entries] == ["PLAIN"]
    assert resolved == ["link.wl", "link.wl", "plain.wl"]
