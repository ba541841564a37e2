"""Keep the index current from file-system events (the only module that imports watchdog).

Events are turned into index work by one worker thread:

- a file closed after writing, or renamed into an AE folder, is read at once;
- a file created or modified but not (yet) closed is read only after it has been quiet for
  :attr:`Watcher.quiet_period` seconds, so a writer still writing is never read half-way (on
  inotify a close event almost always comes first);
- a file read while cut short (a writer flushing it in several writes) is not served, and is
  warned about only if it is still cut short a settle time later
  (:meth:`WorklistStore.settle`);
- a deleted or renamed-away file, or AE folder, is dropped at once;
- a new AE folder is scanned;
- every :attr:`Watcher.rescan_interval` seconds a full, stat-based check corrects anything the
  events missed (network shares, overflowed event queues), on a thread of its own and holding
  the index's write lock only to correct (:meth:`WorklistStore.verify`), so file events are
  applied meanwhile (a check of 100,000 files takes over a second). With ``poll`` set,
  watchdog's polling observer replaces inotify, for shares where inotify sees nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from wlmserver.store.index import LockBusy, WorklistStore

LOGGER = logging.getLogger(__name__)

_READ_NOW = "read-now"
_READ_QUIET = "read-quiet"
_REMOVE = "remove"
_SCAN_FOLDER = "scan-folder"
_SCAN_ALL = "scan-all"
_STOP = "stop"

WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


class _Forwarder(FileSystemEventHandler):
    """Turns watchdog events into work items on a queue."""

    def __init__(self, root: Path, work: queue.Queue[tuple[str, Path]]) -> None:
        self.root = root
        self.work = work

    def _depth(self, path: Path) -> int:
        try:
            return len(path.relative_to(self.root).parts)
        except ValueError:
            return -1

    def _put(self, kind: str, path: Path) -> None:
        self.work.put((kind, path))

    def _arrive(self, path: Path, is_dir: bool, kind: str) -> None:
        depth = self._depth(path)
        if depth == 1 and is_dir:
            self._put(_SCAN_FOLDER, path)
        elif depth == 2 and not is_dir:
            self._put(kind, path)

    def _leave(self, path: Path, is_dir: bool) -> None:
        depth = self._depth(path)
        if depth == 0:
            self._put(_SCAN_ALL, path)
        elif depth == 1 and is_dir:
            self._put(_SCAN_FOLDER, path)
        elif depth == 2:
            self._put(_REMOVE, path)

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = Path(_text(event.src_path))
        kind = event.event_type
        if kind == "modified" and event.is_directory:
            return  # a folder's listing changed: its files' own events say how
        if kind in ("created", "modified"):
            self._arrive(src, event.is_directory, _READ_QUIET)
        elif kind == "closed":
            self._arrive(src, event.is_directory, _READ_NOW)
        elif kind == "deleted":
            self._leave(src, event.is_directory)
        elif kind == "moved":
            self._leave(src, event.is_directory)
            dest = getattr(event, "dest_path", "")
            if dest:
                self._arrive(Path(_text(dest)), event.is_directory, _READ_NOW)


class Watcher:
    """Watches a database root and applies changes to a :class:`WorklistStore`.

    Parameters
    ----------
    store : WorklistStore
        The index to keep current.
    poll : float or None
        Poll the file system every ``poll`` seconds instead of using inotify.
    rescan_interval : float
        Seconds between full consistency rescans (0 turns them off).
    quiet_period : float
        How long a created or modified file must stay unchanged, without a close event,
        before it is read.
    """

    def __init__(
        self,
        store: WorklistStore,
        *,
        poll: float | None = None,
        rescan_interval: float = 60.0,
        quiet_period: float = 1.0,
    ) -> None:
        self.store = store
        self.poll = poll
        self.rescan_interval = rescan_interval
        self.quiet_period = quiet_period
        self._work: queue.Queue[tuple[str, Path]] = queue.Queue()
        self._observer = PollingObserver(timeout=poll) if poll else Observer()
        self._forwarder = _Forwarder(store.root, self._work)
        self._schedule()
        self._root_inode = os.stat(store.root).st_ino
        self._thread = threading.Thread(target=self._run, name="wlmserver-watcher", daemon=True)
        # a file found cut short (by any thread) wakes the worker, which warns if it stays so
        store.on_settling = self._wake
        # periodic rescans run on their own thread, so file events are applied meanwhile
        self._stopping = threading.Event()
        self._rescanner = threading.Thread(
            target=self._rescan_loop, name="wlmserver-rescan", daemon=True
        )

    def _schedule(self) -> None:
        # Only the events that change the store: without this filter inotify also reports
        # every open and every read-only close, two events per file the index itself reads
        # (indexing 100,000 files took 2.4 times as long).
        self._observer.schedule(
            self._forwarder, str(self.store.root), recursive=True, event_filter=WATCHED_EVENTS
        )

    def start(self) -> None:
        """Start watching (the store should have been scanned first)."""
        self._observer.start()
        self._thread.start()
        if self.rescan_interval:
            self._rescanner.start()

    def stop(self) -> None:
        """Stop watching and join the threads."""
        self._observer.stop()
        self._stopping.set()
        self._work.put((_STOP, self.store.root))
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)
        if self._rescanner.is_alive():
            self._rescanner.join(timeout=30)

    def _wake(self) -> None:
        self._work.put(("", self.store.root))

    def _run(self) -> None:
        pending: dict[Path, float] = {}  # files waiting for quiet: path -> when to read
        settle_due: float | None = None  # when the store next has a cut-short file to settle
        while True:
            now = time.monotonic()
            deadlines = list(pending.values())
            if settle_due is not None:
                deadlines.append(settle_due)
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                kind, path = self._work.get(timeout=timeout)
            except queue.Empty:
                kind, path = "", self.store.root
            if kind == _STOP:
                return
            try:
                self._apply(kind, path, pending)
                now = time.monotonic()
                for due_path in [p for p, due in pending.items() if due <= now]:
                    del pending[due_path]
                    self._read(due_path, pending)
                settle_due = self.store.settle()
            except Exception:  # the watcher must outlive any surprise
                LOGGER.exception("watcher: unexpected error while applying %s %s", kind, path)

    def _rescan_loop(self) -> None:
        while not self._stopping.wait(self.rescan_interval):
            try:
                self._rescan()
            except Exception:  # the safety net must outlive any surprise
                LOGGER.exception("watcher: unexpected error in the periodic rescan")

    def _rescan(self) -> None:
        """The periodic safety net: a stat-based rescan, and a new watch if the database root
        itself was replaced (a watch follows the old folder, not the path)."""
        try:
            inode = os.stat(self.store.root).st_ino
        except OSError:
            inode = None
        if inode is not None and inode != self._root_inode:
            LOGGER.warning("%s was replaced: watching the new folder", self.store.root)
            self._root_inode = inode
            self._observer.unschedule_all()
            self._schedule()
        corrected = self.store.verify()
        if corrected:
            LOGGER.info("rescan: %d files were out of date in the index and corrected", corrected)

    def _apply(self, kind: str, path: Path, pending: dict[Path, float]) -> None:
        if kind == _READ_QUIET:
            pending[path] = time.monotonic() + self.quiet_period
        elif kind == _READ_NOW:
            pending.pop(path, None)
            self._read(path, pending)
        elif kind == _REMOVE:
            pending.pop(path, None)
            self.store.remove_file(path)
        elif kind == _SCAN_FOLDER:
            self.store.scan_folder(path.name)
        elif kind == _SCAN_ALL:
            self.store.scan()

    def _read(self, path: Path, pending: dict[Path, float]) -> None:
        try:
            self.store.update_file(path)
        except LockBusy:
            pending[path] = time.monotonic() + self.quiet_period
