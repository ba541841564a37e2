"""The watcher keeps the index current from file events (polled, never fixed sleeps)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.store.index import WorklistStore
from wlmserver.store.watcher import Watcher


def wait_until(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _ids(store: WorklistStore, aet: str = "WLM") -> list[str]:
    folder = store.folder(aet)
    return [e.top.PatientID for e in folder.entries] if folder else []


@pytest.fixture(params=["inotify", "poll"])
def watched(request: pytest.FixtureRequest, db: Path) -> Iterator[WorklistStore]:
    store = WorklistStore(db)
    store.scan()
    poll = 0.05 if request.param == "poll" else None
    watcher = Watcher(store, poll=poll, rescan_interval=0, quiet_period=0.1)
    watcher.start()
    yield store
    watcher.stop()


def test_dropped_file_is_served_within_a_second(watched: WorklistStore, db: Path) -> None:
    write_wl(db / "WLM" / "new.wl", PatientID="NEW")
    assert wait_until(lambda: _ids(watched) == ["NEW"])


def test_atomic_rename_into_place(watched: WorklistStore, db: Path, tmp_path: Path) -> None:
    temp = write_wl(db / "WLM" / ".new.wl.tmp", PatientID="RENAMED")
    os.replace(temp, db / "WLM" / "renamed.wl")
    assert wait_until(lambda: _ids(watched) == ["RENAMED"])
    outside = write_wl(tmp_path / "outside.wl", PatientID="MOVED")
    shutil.move(outside, db / "WLM" / "moved.wl")
    assert wait_until(lambda: sorted(_ids(watched)) == ["MOVED", "RENAMED"])


def test_modified_and_deleted(watched: WorklistStore, db: Path) -> None:
    path = write_wl(db / "WLM" / "a.wl", PatientID="OLD")
    assert wait_until(lambda: _ids(watched) == ["OLD"])
    write_wl(path, PatientID="NEWER")
    assert wait_until(lambda: _ids(watched) == ["NEWER"])
    path.unlink()
    assert wait_until(lambda: _ids(watched) == [])


def test_renamed_away_and_temporary_names_are_not_served(watched: WorklistStore, db: Path) -> None:
    path = write_wl(db / "WLM" / "a.wl", PatientID="A")
    assert wait_until(lambda: _ids(watched) == ["A"])
    os.replace(path, db / "WLM" / "a.wl.done")
    assert wait_until(lambda: _ids(watched) == [])
    folder = watched.folder("WLM")
    assert folder is not None and "a.wl.done" not in folder.files


def test_new_and_removed_ae_folders(watched: WorklistStore, db: Path) -> None:
    (db / "MR01").mkdir()
    write_wl(db / "MR01" / "m.wl", PatientID="MR")
    assert wait_until(lambda: _ids(watched, "MR01") == ["MR"])
    shutil.rmtree(db / "MR01")
    assert wait_until(lambda: watched.folder("MR01") is None)


def test_renamed_ae_folder_is_served_under_its_new_title(watched: WorklistStore, db: Path) -> None:
    (db / "MR01").mkdir()
    write_wl(db / "MR01" / "m.wl", PatientID="MR")
    assert wait_until(lambda: _ids(watched, "MR01") == ["MR"])
    (db / "MR01").rename(db / "MR02")
    assert wait_until(lambda: watched.folder("MR01") is None and _ids(watched, "MR02") == ["MR"])


def test_half_written_file_is_never_served(
    watched: WorklistStore, db: Path, tmp_path: Path
) -> None:
    data = write_wl(tmp_path / "full.wl", PatientID="SLOW").read_bytes()
    target = db / "WLM" / "slow.wl"
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        # without a close, the file is read only after it has been quiet; it is then
        # seen as incomplete and not served
        assert wait_until(lambda: "slow.wl" in _files(watched))
        assert _ids(watched) == []
        handle.write(data[len(data) // 2 :])
    assert wait_until(lambda: _ids(watched) == ["SLOW"])


def _files(store: WorklistStore) -> list[str]:
    folder = store.folder("WLM")
    return list(folder.files) if folder else []


def test_periodic_rescan_corrects_and_follows_a_replaced_root(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    store = WorklistStore(db)
    store.scan()
    watcher = Watcher(store, rescan_interval=0.1, quiet_period=0.1)
    watcher.start()
    try:
        # the root is replaced by another folder: events from the old one no longer matter
        new_root = tmp_path / "new-root"
        write_wl(new_root / "WLM" / "n.wl", PatientID="NEWROOT")
        db.rename(tmp_path / "old-root")
        new_root.rename(db)
        with caplog.at_level(logging.INFO, logger="wlmserver"):
            assert wait_until(lambda: _ids(store) == ["NEWROOT"], timeout=3)
            write_wl(db / "WLM" / "m.wl", PatientID="WATCHED")
            assert wait_until(lambda: sorted(_ids(store)) == ["NEWROOT", "WATCHED"], timeout=3)
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "replaced" in messages and "corrected" in messages
    finally:
        watcher.stop()


def test_indexing_progress_is_logged(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    import wlmserver.store.index as index_module

    monkeypatch.setattr(index_module, "_PROGRESS_SECONDS", -1.0)
    monkeypatch.setattr(index_module, "_CHUNK", 2)
    for n in range(5):
        write_wl(db / "WLM" / f"{n}.wl")
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        WorklistStore(db).scan()
    assert any("indexing WLM: 2 of 5 files" in r.getMessage() for r in caplog.records)


def test_a_file_change_does_not_rescan_its_folder(
    watched: WorklistStore, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's own "modified" event (its listing changed) must not trigger a scan of the
    whole folder: at 100,000 files that cost seconds per dropped file."""
    for n in range(5):
        write_wl(db / "WLM" / f"old{n}.wl", PatientID=f"OLD{n}")
    assert wait_until(lambda: len(_ids(watched)) == 5)
    scans: list[str] = []
    real = watched.scan_folder
    monkeypatch.setattr(watched, "scan_folder", lambda name: (scans.append(name), real(name))[1])
    temp = write_wl(db / "WLM" / ".new.tmp", PatientID="NEW")
    os.replace(temp, db / "WLM" / "new.wl")
    assert wait_until(lambda: "NEW" in _ids(watched))
    (db / "WLM" / "old0.wl").unlink()
    assert wait_until(lambda: "OLD0" not in _ids(watched))
    assert scans == []


def test_a_file_rewritten_many_times_per_second_is_never_served_torn(
    watched: WorklistStore, db: Path, tmp_path: Path
) -> None:
    """Writers replace one file ~100 times a second, by rename and in place; every version a
    reader sees is whole (its fields agree) and the last version wins."""
    import threading

    versions = [
        write_wl(
            tmp_path / f"v{n}.wl",
            PatientID=f"V{n}",
            AccessionNumber=f"A{n}",
            RequestedProcedureID=f"R{n}",
        ).read_bytes()
        for n in range(60)
    ]
    target = db / "WLM" / "hot.wl"
    seen: set[tuple[str, str, str]] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            folder = watched.folder("WLM")
            for entry in folder.entries if folder else ():
                seen.add(
                    (entry.top.PatientID, entry.top.AccessionNumber, entry.top.RequestedProcedureID)
                )

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n, data in enumerate(versions):
            if n % 2:
                temp = db / "WLM" / ".hot.tmp"
                temp.write_bytes(data)
                os.replace(temp, target)
            else:
                with open(target, "wb") as handle:  # in place: truncated, then written
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    handle.write(data[len(data) // 2 :])
            time.sleep(0.01)
        assert wait_until(lambda: _ids(watched) == ["V59"], timeout=3)
    finally:
        done.set()
        reader.join()
    assert seen, "the reader saw nothing"
    assert all(pid[1:] == acc[1:] == rp[1:] for pid, acc, rp in seen), seen


def test_file_events_are_applied_while_a_periodic_rescan_runs(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    store = WorklistStore(db)
    store.scan()
    in_rescan, release = threading.Event(), threading.Event()
    verify = store.verify

    def slow_verify() -> int:  # a rescan of a huge store, held open until the test is done
        in_rescan.set()
        release.wait(10)
        return verify()

    monkeypatch.setattr(store, "verify", slow_verify)
    watcher = Watcher(store, rescan_interval=0.05, quiet_period=0.1)
    watcher.start()
    try:
        assert in_rescan.wait(5)
        write_wl(db / "WLM" / "during.wl", PatientID="DURING")
        assert wait_until(lambda: _ids(store) == ["DURING"], timeout=3)
    finally:
        release.set()
        watcher.stop()


def test_verify_corrects_only_what_is_stale(db: Path) -> None:
    keep = write_wl(db / "WLM" / "keep.wl", PatientID="KEEP")
    gone = write_wl(db / "WLM" / "gone.wl", PatientID="GONE")
    store = WorklistStore(db)
    store.scan()
    assert store.verify() == 0
    gone.unlink()
    write_wl(db / "WLM" / "new.wl", PatientID="NEW")
    os.utime(keep, ns=(1, 1))  # same content, new signature: re-read
    assert store.verify() == 3
    assert sorted(_ids(store)) == ["KEEP", "NEW"]
    assert store.verify() == 0


def test_a_served_file_is_logged_once_by_name(
    watched: WorklistStore, db: Path, caplog: pytest.LogCaptureFixture
) -> None:

    with caplog.at_level(logging.INFO, logger="wlmserver"):
        write_wl(db / "WLM" / "new.wl", PatientID="NEW")
        assert wait_until(lambda: _ids(watched) == ["NEW"])
    assert "WLM/new.wl added: 1 entries served" in caplog.text
    assert "NEW" not in caplog.text  # the patient ID is not logged


def test_a_fifo_or_device_link_does_not_stop_the_watcher(watched: WorklistStore, db: Path) -> None:
    """A FIFO named x.wl once blocked the watcher for good, and a link to /dev/zero made it
    read until memory ran out: files dropped after them were never served."""
    os.mkfifo(db / "WLM" / "x.wl")
    (db / "WLM" / "z.wl").symlink_to("/dev/zero")
    write_wl(db / "WLM" / "after.wl", PatientID="AFTER")
    assert wait_until(lambda: _ids(watched) == ["AFTER"], timeout=10)
    (db / "NEW").mkdir()  # a new AE folder holding a FIFO is scanned without blocking
    os.mkfifo(db / "NEW" / "y.wl")
    write_wl(db / "NEW" / "n.wl", PatientID="N")
    assert wait_until(lambda: _ids(watched, "NEW") == ["N"], timeout=10)


@pytest.mark.parametrize("poll", [None, 0.05])
def test_a_file_written_in_two_flushes_is_no_warning_but_one_left_cut_short_is(
    db: Path, caplog: pytest.LogCaptureFixture, poll: float | None
) -> None:
    store = WorklistStore(db, settle_time=0.5)
    store.scan()
    watcher = Watcher(store, poll=poll, rescan_interval=0, quiet_period=0.05)
    watcher.start()
    try:
        whole = write_wl(db / "WLM" / "tmp.bin", PatientID="SLOW").read_bytes()
        (db / "WLM" / "tmp.bin").unlink()
        with caplog.at_level(logging.WARNING, logger="wlmserver"):
            # a writer flushing half, pausing past the quiet period, then the rest
            with (db / "WLM" / "slow.wl").open("wb") as handle:
                handle.write(whole[: len(whole) // 2])
                handle.flush()
                assert wait_until(lambda: "slow.wl" in _files(store), timeout=5)
                handle.write(whole[len(whole) // 2 :])
            assert wait_until(lambda: _ids(store) == ["SLOW"], timeout=5)
            assert [r.getMessage() for r in caplog.records] == []
            # a file left cut short: one warning, once the settle time has passed
            (db / "WLM" / "cut.wl").write_bytes(whole[:100])
            assert wait_until(lambda: len(caplog.records) == 1, timeout=10)
            store.settle(time.monotonic() + 100)
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("WLM/cut.wl not served: cut short")
    finally:
        watcher.stop()


def _files(store: WorklistStore) -> list[str]:
    folder = store.folder("WLM")
    return list(folder.files) if folder else []
