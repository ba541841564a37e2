"""Retention runs: which files move to the archive folder, how, and what is logged."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import until, write_wl

from wlmserver.matching.retention import RetentionPolicy
from wlmserver.store import retention
from wlmserver.store.index import WorklistStore
from wlmserver.store.retention import RetentionRuns, move_to_archive, plan_folder
from wlmserver.store.watcher import Watcher

TODAY = date(2026, 11, 22)
OLD, CURRENT = "20250101", "20261201"
POLICY = RetentionPolicy(30)


def _steps(*dates: str) -> list[dict[str, Any]]:
    return [
        {"ScheduledProcedureStepStartDate": d, "ScheduledProcedureStepID": f"S{n}"}
        for n, d in enumerate(dates, 1)
    ]


@pytest.fixture
def aged(db: Path) -> Path:
    write_wl(db / "WLM" / "old.wl", PatientName="SECRET^OLD", sps=_steps(OLD))
    write_wl(db / "WLM" / "old2.wl", sps=_steps(OLD, "20250102"))
    write_wl(db / "WLM" / "mixed.wl", sps=_steps(OLD, CURRENT))
    write_wl(db / "WLM" / "current.wl", sps=_steps(CURRENT))
    write_wl(db / "WLM" / "undated.wl", sps=[{"ScheduledProcedureStepStartDate": None}])
    (db / "WLM" / "broken.wl").write_bytes(b"not DICOM" * 20)
    write_wl(db / "CT01" / "old.wl", sps=_steps(OLD))
    return db


def _store(root: Path, **options: Any) -> WorklistStore:
    store = WorklistStore(root, workers=0, reject_incomplete=False, **options)
    store.scan()
    return store


def _files(store: WorklistStore, aet: str = "WLM") -> set[str]:
    folder = store.folder(aet)
    assert folder is not None
    return set(folder.files)


def test_plan_names_steps_and_moves_only_whole_files(aged: Path) -> None:
    store = _store(aged)
    folder = store.folder("WLM")
    assert folder is not None
    files = {name: state.entries for name, state in folder.files.items()}
    plans = {p.name: p for p in plan_folder("WLM", files, POLICY, TODAY, archive=True)}
    assert set(plans) == {"old.wl", "old2.wl", "mixed.wl"}
    assert plans["old.wl"].moves and plans["old2.wl"].moves
    mixed = plans["mixed.wl"]
    assert not mixed.moves and mixed.served == 2
    assert [(s.item, s.sps_id, s.start_date) for s in mixed.hidden] == [(1, "S1", "2025-01-01")]
    no_archive = plan_folder("WLM", files, POLICY, TODAY, archive=False)
    assert not any(p.moves for p in no_archive)


def test_a_run_moves_whole_files_keeps_the_ae_folder_and_logs_counts(
    aged: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "archive"
    store = _store(aged)
    runs = RetentionRuns(store, POLICY, archive)
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        summary = runs.run(TODAY)
    assert summary.moved == {"WLM": 2, "CT01": 1}
    assert summary.hidden == {"WLM": 4, "CT01": 1}
    assert sorted(p.name for p in (archive / "WLM").iterdir()) == ["old.wl", "old2.wl"]
    assert (archive / "CT01" / "old.wl").is_file()
    remaining = {"mixed.wl", "current.wl", "undated.wl", "broken.wl"}
    assert {p.name for p in (aged / "WLM").iterdir()} == remaining
    assert _files(store) == remaining  # gone from the index at once
    assert oct((archive / "WLM").stat().st_mode & 0o777) == "0o700"
    lines = [r.getMessage() for r in caplog.records if r.name == "wlmserver.store.retention"]
    assert len(lines) == 1
    assert "before 2026-10-23" in lines[0] and "WLM 4 steps hidden, 2 files moved" in lines[0]
    assert "SECRET" not in caplog.text
    assert runs.run(TODAY).moved == {}  # nothing left to move


def test_without_an_archive_folder_nothing_moves(aged: Path) -> None:
    before = sorted(p.name for p in (aged / "WLM").iterdir())
    summary = RetentionRuns(_store(aged), POLICY, None).run(TODAY)
    assert summary.hidden["WLM"] == 4 and not summary.moved
    assert sorted(p.name for p in (aged / "WLM").iterdir()) == before


def test_a_run_that_changed_nothing_logs_nothing(
    aged: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runs come hourly: only one that hid steps the one before did not, or moved files,
    is logged (issue 19)."""
    store = _store(aged)
    runs = RetentionRuns(store, POLICY, None)

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "wlmserver.store.retention"]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger="wlmserver"):
        runs.run(TODAY)
        assert len(lines()) == 1  # the first run: 5 steps hidden
        runs.run(TODAY)
        assert lines() == []  # the same steps hidden: nothing to say
        write_wl(aged / "WLM" / "old3.wl", sps=_steps(OLD))
        store.update_file(aged / "WLM" / "old3.wl")
        runs.run(TODAY)
        (line,) = lines()
        assert "WLM 5 steps hidden" in line
        runs.run(TODAY)
        assert lines() == []
    quiet = RetentionRuns(
        _store(
            aged,
        ),
        POLICY,
        None,
    )
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        for folder in ("WLM", "CT01"):
            for path in (aged / folder).glob("old*.wl"):
                path.unlink()
        (aged / "WLM" / "mixed.wl").unlink()
        quiet.store.scan()
        quiet.run(TODAY)
        assert lines() == []  # nothing past retention at all: silent too


def test_an_archived_file_is_never_overwritten(db: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "WLM").mkdir(parents=True)
    (archive / "WLM" / "a.wl").write_bytes(b"first")
    (archive / "WLM" / "a.1.wl").write_bytes(b"second")
    data = write_wl(db / "WLM" / "a.wl", sps=_steps(OLD)).read_bytes()
    RetentionRuns(_store(db), POLICY, archive).run(TODAY)
    assert (archive / "WLM" / "a.wl").read_bytes() == b"first"
    assert (archive / "WLM" / "a.1.wl").read_bytes() == b"second"
    assert (archive / "WLM" / "a.2.wl").read_bytes() == data
    assert not (db / "WLM" / "a.wl").exists()


def test_across_file_systems_a_complete_copy_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "WLM" / "a.wl"
    source.parent.mkdir()
    source.write_bytes(b"x" * 3_000_000)
    real_link = os.link
    calls: list[str] = []

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        calls.append(Path(src).name)
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(retention.os, "link", link)
    target = move_to_archive(source, tmp_path / "archive" / "WLM")
    assert target == tmp_path / "archive" / "WLM" / "a.wl"
    assert target.read_bytes() == b"x" * 3_000_000 and not source.exists()
    assert calls[0] == "a.wl" and calls[1].endswith(".tmp")  # copied, then linked into place
    assert [p.name for p in target.parent.iterdir()] == ["a.wl"]  # no temporary left


def test_a_failed_copy_leaves_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "WLM" / "a.wl"
    source.parent.mkdir()
    source.write_bytes(b"data")

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(retention.os, "link", link)
    monkeypatch.setattr(retention.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space"):
        move_to_archive(source, tmp_path / "archive")
    assert source.read_bytes() == b"data"
    assert list((tmp_path / "archive").iterdir()) == []


def test_a_file_that_cannot_move_is_warned_about_once(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "archive"
    write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    store = _store(db)
    archive.mkdir()
    (archive / "WLM").write_bytes(b"a file where the folder should be")
    runs = RetentionRuns(store, POLICY, archive)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        assert runs.run(TODAY).failed == {"WLM": 1}
        runs.run(TODAY)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WLM/a.wl past retention, not moved" in warnings[0]
    assert (db / "WLM" / "a.wl").exists() and _files(store) == {"a.wl"}


def test_a_file_rewritten_since_it_was_read_is_judged_again(db: Path, tmp_path: Path) -> None:
    path = write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    store = _store(db)
    write_wl(path, sps=_steps(CURRENT), PatientID="RESCHEDULED")  # the index not told yet
    summary = RetentionRuns(store, POLICY, tmp_path / "archive").run(TODAY)
    assert summary.moved == {"WLM": 0} and summary.failed == {"WLM": 0}
    assert path.exists()


def test_a_symbolic_link_is_not_moved(db: Path, tmp_path: Path) -> None:
    target = write_wl(db / "WLM" / ".real", sps=_steps(OLD))
    (db / "WLM" / "link.wl").symlink_to(target)
    summary = RetentionRuns(_store(db), POLICY, tmp_path / "archive").run(TODAY)
    assert summary.failed == {"WLM": 1} and (db / "WLM" / "link.wl").is_symlink()


def test_an_archive_folder_that_is_a_link_is_never_followed(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``<archive>/WLM`` linked into the database made retention move WLM's old files into
    another AE folder, where they were served again (issue 20, finding 8)."""
    (db / "CT01").mkdir()
    write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    write_wl(db / "WLM" / "b.wl", sps=_steps(OLD))
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "WLM").symlink_to(db / "CT01")
    store = _store(db)
    runs = RetentionRuns(store, POLICY, archive)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        assert runs.run(TODAY).failed == {"WLM": 2}
        runs.run(TODAY)  # the next run says nothing new
    assert sorted(p.name for p in (db / "WLM").glob("*.wl")) == ["a.wl", "b.wl"]
    assert list((db / "CT01").iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "symbolic link" in warnings[0], warnings
    (archive / "WLM").unlink()  # mended: the next run moves them
    assert runs.run(TODAY).moved == {"WLM": 2}
    assert sorted(p.name for p in (archive / "WLM").iterdir()) == ["a.wl", "b.wl"]


def test_a_move_never_follows_a_link_put_in_place_of_the_archive_folder(
    db: Path, tmp_path: Path
) -> None:
    """Also when the link appears between the run's check and the move."""
    source = write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    (db / "CT01").mkdir()
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "WLM").symlink_to(db / "CT01")
    with pytest.raises(OSError, match="symbolic link"):
        move_to_archive(source, tmp_path / "archive" / "WLM")
    assert source.exists() and list((db / "CT01").iterdir()) == []


def test_the_lockfile_is_held_as_a_writer(db: Path, tmp_path: Path) -> None:
    lock_path = db / "WLM" / "lockfile"
    lock_path.touch()
    path = write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    store = _store(db, lock_timeout=0.2)
    runs = RetentionRuns(store, POLICY, tmp_path / "archive")
    # a wlmscpfs reader holds the shared lock (in another process: POSIX locks are per process)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        with open(lock_path, "rb") as handle:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_SH)
            os.write(write_end, b"x")
            threading.Event().wait(1)
        os._exit(0)
    try:
        assert os.read(read_end, 1) == b"x"
        assert runs.run(TODAY).moved == {"WLM": 0}
        assert path.exists()
    finally:
        os.waitpid(pid, 0)
    assert runs.run(TODAY).moved == {"WLM": 1}
    assert not path.exists()


def test_runs_on_a_thread_of_their_own_start_and_stop(db: Path, tmp_path: Path) -> None:
    write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    store = WorklistStore(db, workers=0)
    runs = RetentionRuns(store, POLICY, tmp_path / "archive", clock=lambda: TODAY)
    runs.start()
    try:
        store.scan()  # the first run waits for the first index
        assert until(lambda: (tmp_path / "archive" / "WLM" / "a.wl").exists())
    finally:
        runs.stop()
    stopped_early = RetentionRuns(WorklistStore(db, workers=0), POLICY, None)
    stopped_early.start()
    stopped_early.stop()  # never indexed: stops all the same


@pytest.mark.parametrize("poll", [None, 0.2])
def test_the_watcher_copes_with_moved_files(db: Path, tmp_path: Path, poll: float | None) -> None:
    write_wl(db / "WLM" / "a.wl", sps=_steps(OLD))
    write_wl(db / "WLM" / "b.wl", sps=_steps(CURRENT))
    store = _store(db)
    watcher = Watcher(store, poll=poll, rescan_interval=0)
    watcher.start()
    try:
        RetentionRuns(store, POLICY, tmp_path / "archive").run(TODAY)
        assert _files(store) == {"b.wl"}
        write_wl(db / "WLM" / "c.wl", sps=_steps(CURRENT))  # the watcher still applies events
        assert until(lambda: _files(store) == {"b.wl", "c.wl"})
    finally:
        watcher.stop()
