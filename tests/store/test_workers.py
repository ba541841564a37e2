"""Worker processes reading many files: the same index, the same log lines, the lockfile
honoured, and the files read here when workers cannot run."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.store import index as index_module
from wlmserver.store import workers as workers_module
from wlmserver.store.index import WorklistStore


@pytest.fixture
def varied(db: Path) -> Path:
    """Good files, incomplete, undecodable, empty (cut short), a link out, JSON drops."""
    for n in range(40):
        sps = [{"Modality": "CT"}, {"Modality": "MR"}] if n % 7 == 0 else None
        write_wl(db / "WLM" / f"{n:03}.wl", PatientID=f"PID{n:03}", sps=sps)
    write_wl(db / "WLM" / "incomplete.wl", PatientID="PIDX", sps=[{"Modality": None}])
    (db / "WLM" / "junk.wl").write_bytes(b"not DICOM at all")
    (db / "WLM" / "empty.wl").write_bytes(b"")
    outside = db.parent / "outside.wl"
    write_wl(outside, PatientID="OUTSIDE")
    (db / "WLM" / "link.wl").symlink_to(outside)
    (db / "WLM" / "order.json").write_text(
        '{"PatientName": "DOE^J", "PatientID": "PIDJ", "AccessionNumber": "A1",'
        ' "ScheduledProcedureStepSequence": [{"Modality": "US",'
        ' "ScheduledStationAETitle": "US1", "ScheduledProcedureStepStartDate": "20261202",'
        ' "ScheduledProcedureStepStartTime": "0900"}]}'
    )
    return db


def _seen(store: WorklistStore) -> tuple[object, ...]:
    folder = store.folder("WLM")
    assert folder is not None
    return (
        [(e.path, e.item, list(e.top), list(e.sps), e.charset, e.order) for e in folder.entries],
        {f: (s.signature, s.problem, s.cut_short) for f, s in folder.files.items()},
    )


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return sorted(
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "wlmserver.store.index" and "indexing" not in r.getMessage()
    )


def test_workers_index_what_this_process_indexes(
    varied: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wlmserver.store.index")
    monkeypatch.setattr(index_module, "PARALLEL_ABOVE", 1)
    monkeypatch.setattr(workers_module, "BATCH", 7)  # several batches, spread over workers
    here = WorklistStore(varied, json_drops=True, workers=0)
    here.scan()
    said_here = _messages(caplog)
    caplog.clear()
    there = WorklistStore(varied, json_drops=True, workers=2)
    there.scan()
    assert _seen(there) == _seen(here)
    assert _messages(caplog) == said_here  # every file's warning, the same words
    assert any("in 2 worker processes" in r.getMessage() for r in caplog.records)
    assert ("WLM", "empty.wl") in there._settling  # cut short: settling, as here
    assert not [r for r in caplog.records if "worker processes failed" in r.getMessage()]


def test_workers_honour_a_held_lockfile(
    varied: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(index_module, "PARALLEL_ABOVE", 1)
    lock_path = varied / "WLM" / "lockfile"
    lock_path.touch()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a wlmscpfs-era writer, in a process of its own
        with open(lock_path, "r+b") as handle:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
            os.write(write_end, b"x")
            threading.Event().wait(3)
        os._exit(0)
    try:
        assert os.read(read_end, 1) == b"x"
        store = WorklistStore(varied, workers=2, lock_timeout=0.2)
        store.scan()
        folder = store.folder("WLM")
        assert folder is not None and folder.entries == ()  # deferred, not read under it
        assert any("lockfile held by a writer" in r.getMessage() for r in caplog.records)
    finally:
        os.waitpid(pid, 0)
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None and len(folder.entries) > 40


def test_without_workers_the_files_are_read_here(
    varied: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(index_module, "PARALLEL_ABOVE", 1)
    reference = WorklistStore(varied, workers=0)
    reference.scan()
    monkeypatch.setattr(sys, "executable", str(varied / "no-such-python"))
    store = WorklistStore(varied, workers=2)
    store.scan()
    assert _seen(store) == _seen(reference)
    assert any("worker processes failed" in r.getMessage() for r in caplog.records)


def test_a_worker_that_dies_leaves_the_rest_to_this_process(
    varied: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(index_module, "PARALLEL_ABOVE", 1)
    monkeypatch.setattr(workers_module, "BATCH", 5)
    reference = WorklistStore(varied, workers=0)
    reference.scan()
    # the second worker exits at once: its first batch never comes back
    real = workers_module._Worker.__init__
    started: list[workers_module._Worker] = []

    def start(self: workers_module._Worker, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        started.append(self)
        if len(started) == 2:
            self.process.kill()

    monkeypatch.setattr(workers_module._Worker, "__init__", start)
    store = WorklistStore(varied, workers=2)
    store.scan()
    assert _seen(store) == _seen(reference)
    assert any("worker processes failed" in r.getMessage() for r in caplog.records)
    assert all(w.process.poll() is not None for w in started)  # none left behind


def test_worker_count_follows_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert workers_module.worker_count() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(4)))
    assert workers_module.worker_count() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    assert workers_module.worker_count() == 8


def test_a_folder_read_whole_by_workers_is_stat_ed_by_them(
    varied: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder indexed for the first time is listed without a stat per file: each worker
    stats a file just before it reads it, so a file gone since the listing is left out, and
    every signature is the file's as it was read."""
    monkeypatch.setattr(index_module, "PARALLEL_ABOVE", 1)
    real_listing = WorklistStore._listing
    stats: list[str] = []
    real_signatures = WorklistStore._signatures

    def listing(self: WorklistStore, folder: Path) -> object:
        listed = real_listing(self, folder)
        (folder / "005.wl").unlink()  # gone after it was listed
        return listed

    def signatures(listed: object) -> object:
        stats.append("listing")
        return real_signatures(listed)  # type: ignore[arg-type]

    monkeypatch.setattr(WorklistStore, "_listing", listing)
    monkeypatch.setattr(WorklistStore, "_signatures", staticmethod(signatures))
    store = WorklistStore(varied, workers=2)
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None and stats == []  # no stat of every file first
    assert "005.wl" not in folder.files and "004.wl" in folder.files
    for fname, state in folder.files.items():
        st = os.stat(varied / "WLM" / fname)
        assert state.signature == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
