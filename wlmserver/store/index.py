"""The in-memory index of a worklist database: AE title -> an immutable snapshot of entries.

The database is a folder tree ``<root>/<AETitle>/*.wl`` (the wlmscpfs layout). Each AE folder
is held as a :class:`FolderSnapshot`, replaced whole under a lock whenever one of its files
changes, so an association thread that took a snapshot never sees half an update. Files are
re-read only when their signature (size, modification time, inode, change time) changes, which
makes a full rescan cheap; a file that cannot be served is logged once per version, with the reason.

When an AE folder holds a ``lockfile`` (wlmscpfs's convention), its files are read under a
shared POSIX lock on it, as wlmscpfs does, so a writer holding the exclusive lock is waited for.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from wlmserver.matching.entry import Entry
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE, FileState, Signature
from wlmserver.store.formats import Formats
from wlmserver.store.listing import Listing, ListingsAhead, signature_of
from wlmserver.store.lookup import Lookup, LookupBuilder
from wlmserver.store.reader import (
    LOCKFILE,
    LockBusy,
    Note,
    ReadOptions,
    folder_lock,
    read_state,
    unexpected_reason,
)
from wlmserver.store.workers import PARALLEL_ABOVE, WorkerReads, WorkersFailed, worker_count

LOGGER = logging.getLogger(__name__)

_CHUNK = 256  # files read per hold of a folder's lockfile
_VERIFY_ONE_BY_ONE = 64  # more stale files than this: the periodic check rescans the folder
_PROGRESS_SECONDS = 2.0
MAX_AE_TITLE_LENGTH = 16


def is_safe_ae_title(aet: str) -> bool:
    """Whether a called AE title may name a folder: 1-16 characters, no path or control chars.

    This is checked before the title touches the file system, so ``..``, ``a/b``, ``/etc`` or
    a NUL byte can never make the server read outside its database root.

    Examples
    --------
    >>> [is_safe_ae_title(t) for t in ("OFFIS", "CT_01", "..", "a/b", "a\\\\b", "", "A" * 17)]
    [True, True, False, False, False, False, False]
    """
    return (
        0 < len(aet) <= MAX_AE_TITLE_LENGTH
        and "." not in aet
        and "/" not in aet
        and "\\" not in aet
        and all(32 <= ord(c) < 127 for c in aet)
        and aet.strip() == aet
    )


@dataclass(frozen=True)
class FolderSnapshot:
    """An immutable view of one AE folder.

    Attributes
    ----------
    name : str
        The AE title (the folder name).
    lookup : Lookup
        Every served entry, in answer order (scheduled start, file, item), with lookups.
    files : Mapping of str to FileState
        The state of each ``.wl`` file, by file name.
    """

    name: str
    lookup: Lookup = field(default_factory=lambda: Lookup.build(()))
    files: MappingProxyType[str, FileState] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def entries(self) -> tuple[Entry, ...]:
        """Every served entry, in answer order."""
        return self.lookup.entries

    @property
    def rejected(self) -> int:
        """How many files serve nothing."""
        return sum(1 for f in self.files.values() if not f.entries)


_SIGNATURE_OF_STATE = operator.itemgetter(0)  # FileState.signature, in C


class WorklistStore:
    """The index of a worklist database root.

    Parameters
    ----------
    root : Path
        The database root (wlmscpfs's ``-dfp``).
    reject_incomplete : bool
        Leave out entries lacking a Type 1 attribute (wlmscpfs's ``-efr``, the default).
    lock_timeout : float
        How long to wait for a folder's ``lockfile`` before deferring a read.
    json_drops : bool
        Serve ``*.json`` drop files too (when ``formats`` is not given).
    formats : Formats, optional
        The drop formats served (:mod:`wlmserver.store.formats`).
    max_file_size : int
        Files larger than this many bytes are not read (``--max-file-size``).
    follow_links : bool
        Serve files and AE folders whose symbolic links lead out of the database root
        (``--follow-links``); by default they are not served, saying why.
    workers : int, optional
        How many worker processes read files when many are to be read (the first index);
        0 reads every file in this process; by default one per CPU (none on one CPU).
    settle_time : float
        How long a file found cut short (empty, or ending inside its structure) may stay so
        before a warning says it is not served: a writer that writes a file in several
        flushes is not a problem. See :meth:`settle`.
    """

    def __init__(
        self,
        root: Path,
        *,
        reject_incomplete: bool = True,
        lock_timeout: float = 10.0,
        json_drops: bool = False,
        settle_time: float = 3.0,
        formats: Formats | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        follow_links: bool = False,
        workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        #: Worker processes reading many files at once (:mod:`wlmserver.store.workers`);
        #: 0: every file is read in this process.
        self.workers = worker_count() if workers is None else workers
        self.settle_time = settle_time
        self.max_file_size = max_file_size
        self.follow_links = follow_links
        self._real_root = os.path.realpath(self.root)
        self._outside: set[str] = set()  # AE folders leading out of the root, logged once
        #: (AE folder, file name) of files found cut short and not warned about -> deadline
        self._settling: dict[tuple[str, str], float] = {}
        #: Called (from any thread) when a file starts settling; the watcher sets it to wake.
        self.on_settling: Callable[[], None] | None = None
        self.reject_incomplete = reject_incomplete
        self.formats = formats if formats is not None else Formats.chosen(json_drops=json_drops)
        self.lock_timeout = lock_timeout
        #: How files are read (what a worker process reading files is given too).
        self.read_options = ReadOptions(
            self.formats, reject_incomplete, max_file_size, follow_links, self._real_root
        )
        self._folders: dict[str, FolderSnapshot] = {}
        self._write_lock = threading.RLock()
        #: Set once the first full scan is done.
        self.ready = threading.Event()

    # ------------------------------------------------------------------ reading side
    def folder(self, aet: str) -> FolderSnapshot | None:
        """The current snapshot of an AE folder, or None if there is no such folder."""
        if not is_safe_ae_title(aet):
            return None
        return self._folders.get(aet)

    def folder_names(self) -> list[str]:
        """The AE titles served, sorted."""
        return sorted(self._folders)

    def published(self) -> dict[str, FolderSnapshot]:
        """Every folder's current snapshot, by AE title: a consistent copy (what the index
        cache saves)."""
        return self._folders.copy()

    def snapshots(self) -> list[FolderSnapshot]:
        """Every folder's current snapshot, by AE title."""
        return [self._folders[name] for name in self.folder_names()]

    # ------------------------------------------------------------------ writing side
    def writing(self) -> contextlib.AbstractContextManager[bool]:
        """Hold the index's write lock: no file is read into the index meanwhile.

        What moving files out of an AE folder holds (:mod:`wlmserver.store.retention`):
        POSIX record locks belong to the process, so no read of this process may hold a
        folder's ``lockfile`` while the mover holds it exclusively.
        """
        return self._write_lock

    def scan(
        self,
        cached: Mapping[str, FolderSnapshot] | None = None,
        listings: ListingsAhead | None = None,
    ) -> int:
        """Bring the whole index in line with the disk (start-up and periodic safety net).

        Parameters
        ----------
        cached : mapping, optional
            AE title -> the snapshot the index cache kept (:mod:`wlmserver.store.cache`), for
            folders not indexed yet: a file is read only when its signature on disk differs
            from the cached one (or it is not cached), as if the cached snapshot were the
            index's own, and its lookup is updated rather than built again.
        listings : ListingsAhead, optional
            The folders listed (and their files stat'ed) ahead, in another thread.

        Returns
        -------
        int
            How many files were added, re-read or dropped (0 when the index was current).
        """
        corrected = 0
        with self._write_lock:
            try:
                names = set(self.listed_folder_names())
            except OSError as exc:
                LOGGER.error("cannot list the database root %s: %s", self.root, exc)
                return 0
            for gone in set(self._folders) - names:
                corrected += len(self._folders[gone].files)
                self.remove_folder(gone)
            for name in sorted(names):
                listing = listings.take(name) if listings is not None else None
                corrected += self.scan_folder(name, (cached or {}).get(name), listing)
        self.ready.set()
        return corrected

    def listed_folder_names(self) -> list[str]:
        """The AE folders in the database root now, sorted; raises OSError when the root
        cannot be listed."""
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and is_safe_ae_title(p.name)
        )

    def list_ahead(self) -> ListingsAhead | None:
        """Start listing every AE folder (and stat'ing its files) in a child process, for a
        :meth:`scan` to take; None when the root cannot be listed."""
        try:
            names = self.listed_folder_names()
        except OSError:
            return None
        return ListingsAhead(self.root, names, self.formats.rule)

    def serves(self, name: str) -> bool:
        """Whether a file name in an AE folder is served (by one of :attr:`formats`)."""
        return self.formats.serves(name)

    def verify(self) -> int:
        """The periodic safety net: bring the index in line with the disk, holding the write
        lock only to correct what is out of date.

        :meth:`scan` holds the lock while it stats every file (1.5 s at 100,000 files), and
        file events wait for it. This compares the disk with the published snapshots without
        the lock, then corrects each stale file through the ordinary per-file updates (a
        whole folder through :meth:`scan_folder` when many are stale).

        Returns
        -------
        int
            How many files were out of date (added, re-read or dropped).
        """
        try:
            names = set(self.listed_folder_names())
        except OSError as exc:
            LOGGER.error("cannot list the database root %s: %s", self.root, exc)
            return 0
        corrected = 0
        for gone in set(self._folders) - names:
            folder = self._folders.get(gone)
            corrected += len(folder.files) if folder is not None else 0
            self.remove_folder(gone)
        for name in sorted(names):
            corrected += self._verify_folder(name)
        return corrected

    def _verify_folder(self, name: str) -> int:
        folder = self._folders.get(name)
        if folder is None:
            return self.scan_folder(name)
        folder_path = self.root / name
        try:
            listing = self._listing(folder_path)
        except OSError:
            return self.scan_folder(name)  # the folder went away: scan_folder drops it
        on_disk = self._signatures(listing)
        files = folder.files
        stale = [
            fname
            for fname, signature in on_disk.items()
            if (state := files.get(fname)) is None or state.signature != signature
        ]
        vanished = [fname for fname in files if fname not in on_disk]
        if len(stale) + len(vanished) > _VERIFY_ONE_BY_ONE:
            return self.scan_folder(name)
        for fname in vanished:
            self.remove_file(folder_path / fname)
        for fname in stale:
            with contextlib.suppress(LockBusy):  # the writer's event will bring it in
                self.update_file(folder_path / fname)
        return len(stale) + len(vanished)

    def scan_folder(
        self, name: str, cached: FolderSnapshot | None = None, listing: Listing | None = None
    ) -> int:
        """Re-read what changed in one AE folder (files whose signature changed).

        Files are read in chunks, each under the folder's ``lockfile`` when there is one, so a
        wlmscpfs-era writer waits at most one chunk. Progress is logged every few seconds.

        Parameters
        ----------
        name : str
            The AE title.
        cached : FolderSnapshot, optional
            From the index cache: taken as the folder's current snapshot when the folder is
            not indexed yet (see :meth:`scan`); no file of it is served unchecked.
        listing : list, optional
            The folder's listing made ahead (:class:`~wlmserver.store.listing.ListingsAhead`),
            instead of listing it now.

        Returns
        -------
        int
            How many files were added, re-read or dropped.
        """
        if not is_safe_ae_title(name):
            return 0
        folder_path = self.root / name
        if not self._inside_root(folder_path, name):
            return 0
        with self._write_lock:
            try:
                if listing is None:
                    listing = self._listing(folder_path)
            except OSError:
                count = len(self._folders[name].files) if name in self._folders else 0
                self.remove_folder(name)
                return count
            old = self._folders.get(name)
            base = cached if old is None else None
            if old is None:
                old = cached or FolderSnapshot(name)
            files = old.files.copy()
            is_new = name not in self._folders
            on_disk: Mapping[str, Signature | None]
            vanished: set[str] = set()
            changed = 0
            if (
                is_new
                and not files
                and listing.signatures is None
                and self._in_workers(len(listing.names))
            ):
                # a folder read whole by workers: each file is stat'ed by the worker just
                # before it reads it (its signature is then that stat's, as when a writer held
                # the lockfile), not here first, all of them one after the other
                on_disk = dict.fromkeys(listing.names)
                stale = list(listing.names)
            else:
                signatures = self._signatures(listing)
                on_disk = signatures
                vanished = files.keys() - signatures.keys()
                for gone in vanished:
                    del files[gone]
                    changed += 1  # cached states not on the disk any more: never published
                # one comparison in C when nothing changed (a restart from a current cache)
                known = dict(
                    zip(files.keys(), map(_SIGNATURE_OF_STATE, files.values()), strict=True)
                )
                stale = (
                    sorted(f for f, signature in signatures.items() if known.get(f) != signature)
                    if known != signatures
                    else []
                )
            done = 0  # stale files dealt with
            # a folder read whole: its lookup is built as its files come (while workers read)
            builder = LookupBuilder() if is_new and not files else None
            try:
                for count, read in self._read_stale(folder_path, stale, on_disk, listing):
                    done = count
                    for fname, state in read:
                        files[fname] = state
                        changed += 1
                        if builder is not None:
                            builder.add(state.entries)
            except LockBusy:
                LOGGER.warning("%s: lockfile held by a writer; will retry", folder_path)
                if is_new:  # cached states not checked against the disk: never published
                    for fname in stale[done:]:
                        if files.pop(fname, None) is not None:
                            changed += 1
            if changed or is_new:
                lookup = builder.build() if builder is not None else None
                self._publish(name, files, vanished | set(stale), base=base, lookup=lookup)
            return changed

    def _in_workers(self, count: int) -> bool:
        """Whether this many files to read are read by worker processes, not here."""
        return bool(self.workers) and count >= PARALLEL_ABOVE

    def _read_stale(
        self,
        folder_path: Path,
        stale: list[str],
        on_disk: Mapping[str, Signature | None],
        listing: Listing,
    ) -> Iterator[tuple[int, list[tuple[str, FileState]]]]:
        """Read the files of a folder whose signature changed, in chunks, each under the
        folder's ``lockfile`` when there is one; yields ``(how many files were dealt with,
        the states read)`` as they come. Many files are read by worker processes
        (:mod:`wlmserver.store.workers`) when :attr:`workers` allows; progress is logged every
        few seconds.

        Raises
        ------
        LockBusy
            A wlmscpfs-era writer held the lockfile too long: the files after the last count
            yielded are not read.
        """
        name = folder_path.name
        last_report = time.monotonic()
        done = 0
        rows = [(f, on_disk[f], f in listing.links) for f in stale]
        if self._in_workers(len(rows)):
            try:
                with WorkerReads(self.workers, self.read_options, self.lock_timeout) as pool:
                    LOGGER.info(
                        "indexing %s: %d files, in %d worker processes",
                        name,
                        len(rows),
                        self.workers,
                    )
                    for done, batch in pool.read(folder_path, rows):
                        # a file without a problem has only a debug line to log: no path
                        # is made for it unless that is shown
                        debug = LOGGER.isEnabledFor(logging.DEBUG)
                        for fname, state, notes in batch:
                            if debug or state.problem is not None or state.cut_short:
                                self._took(folder_path / fname, state, notes)
                        yield done, [(fname, state) for fname, state, _ in batch]
                        if time.monotonic() - last_report > _PROGRESS_SECONDS:
                            last_report = time.monotonic()
                            LOGGER.info("indexing %s: %d of %d files", name, done, len(rows))
                return
            except WorkersFailed as exc:
                LOGGER.warning(
                    "indexing %s: worker processes failed (%s); the remaining %d files are "
                    "read here",
                    name,
                    exc,
                    len(rows) - done,
                )
        for start in range(done, len(rows), _CHUNK):
            read: list[tuple[str, FileState]] = []
            with self._folder_lock(folder_path) as locked:
                for fname, signature, is_link in rows[start : start + _CHUNK]:
                    path = folder_path / fname
                    # a writer may have finished it meanwhile (or it was listed unstat'ed):
                    # as it is now
                    if locked or signature is None:
                        now = listing.signature_now(path)
                        if now is None:
                            continue  # gone: its event removes it
                        signature = now
                    read.append((fname, self._read(path, signature, None, is_link)))
            yield min(start + _CHUNK, len(rows)), read
            if time.monotonic() - last_report > _PROGRESS_SECONDS:
                last_report = time.monotonic()
                LOGGER.info(
                    "indexing %s: %d of %d files", name, min(start + _CHUNK, len(rows)), len(rows)
                )

    def update_file(self, path: Path) -> None:
        """(Re)read one file after a file event; a vanished file is removed."""
        name = path.parent.name
        if path.parent.parent != self.root or not is_safe_ae_title(name):
            return
        if not self.serves(path.name):
            return
        with self._write_lock:
            if name not in self._folders:
                self.scan_folder(name)
                return
            try:
                st = path.stat()
            except OSError:
                self.remove_file(path)
                return
            files = self._folders[name].files.copy()
            old = files.get(path.name)
            signature = signature_of(st)
            if old is not None and old.signature == signature:
                return
            try:
                with self._folder_lock(path.parent):
                    files[path.name] = self._read(path, signature, old)
            except LockBusy:
                LOGGER.warning("%s: lockfile held by a writer; will retry", path.parent)
                raise
            self._publish(name, files, {path.name})
            served = len(files[path.name].entries)
            if served:
                verb = "re-read" if old is not None else "added"
                LOGGER.info("%s/%s %s: %d entries served", name, path.name, verb, served)

    def remove_file(self, path: Path) -> None:
        """Forget a deleted or moved-away file."""
        name = path.parent.name
        with self._write_lock:
            folder = self._folders.get(name)
            if folder is None or path.name not in folder.files:
                return
            files = folder.files.copy()
            del files[path.name]
            LOGGER.info("%s/%s removed from the index", name, path.name)
            self._publish(name, files, {path.name})

    def remove_folder(self, name: str) -> None:
        """Forget an AE folder that disappeared."""
        with self._write_lock:
            if self._folders.pop(name, None) is not None:
                LOGGER.info("AE folder %s removed from the index", name)

    def settle(self, now: float | None = None) -> float | None:
        """Warn once about each file still cut short a settle time after it was read so.

        A file that changed meanwhile is read again instead (a writer finishing it makes it
        served, without any warning). The watcher calls this when a deadline passes.

        Returns
        -------
        float or None
            The next deadline (:func:`time.monotonic`), or None if no file is settling.
        """
        now = time.monotonic() if now is None else now
        with self._write_lock:
            for key in [k for k, due in self._settling.items() if due <= now]:
                del self._settling[key]
                name, fname = key
                folder = self._folders.get(name)
                state = folder.files.get(fname) if folder is not None else None
                if state is None or not state.cut_short:
                    continue
                path = self.root / name / fname
                try:
                    signature = signature_of(path.stat())
                except OSError:
                    continue  # gone: its event removes it
                if signature != state.signature:
                    with contextlib.suppress(LockBusy):
                        self.update_file(path)
                    continue
                LOGGER.warning(
                    "%s/%s not served: %s, and unchanged for %.0f s",
                    name,
                    fname,
                    state.problem,
                    self.settle_time,
                )
            return min(self._settling.values(), default=None)

    # ------------------------------------------------------------------ internals
    def _is_inside(self, path: Path) -> bool:
        """Whether a path, its links followed, lies inside the database root."""
        return self.read_options.is_inside(path)

    def _inside_root(self, folder_path: Path, name: str) -> bool:
        """Whether an AE folder may be served: inside the root once its links are followed
        (or ``follow_links``). A folder leading out is dropped, and logged once."""
        if self.follow_links or self._is_inside(folder_path):
            self._outside.discard(name)
            return True
        if name not in self._outside:
            self._outside.add(name)
            LOGGER.warning(
                "AE folder %s not served: a symbolic link out of the database root, not "
                "followed (--follow-links)",
                name,
            )
        self.remove_folder(name)
        return False

    def _listing(self, folder_path: Path) -> Listing:
        """The served names in a folder, sorted, whatever their type: the reader refuses what
        is not a regular file, with a reason, so it is reported rather than silently skipped.
        Raises OSError when the folder cannot be listed."""
        return Listing.of(folder_path, self.serves)

    @staticmethod
    def _signatures(listing: Listing) -> dict[str, Signature]:
        """The signature of every file of a listing that can be stat'ed."""
        if listing.signatures is not None:
            return listing.signatures
        on_disk = {}
        for fname in listing.names:
            signature = listing.signature(fname)
            if signature is not None:  # else gone, or a broken link
                on_disk[fname] = signature
        return on_disk

    def _read(
        self,
        path: Path,
        signature: Signature,
        old: FileState | None,
        is_link: bool | None = None,
    ) -> FileState:
        """Read one file into its state, logging what :func:`read_state` says of it; a file
        found cut short starts settling (see :meth:`settle`)."""
        state, notes = read_state(path, signature, self.read_options, is_link)
        self._took(path, state, notes)
        return state

    def _took(self, path: Path, state: FileState, notes: list[Note]) -> None:
        """Log what was said of a file read (here or by a worker), and start settling it if
        it was found cut short."""
        for level, message in notes:
            LOGGER.log(level, "%s", message)
        if state.cut_short:
            self._settling[(path.parent.name, path.name)] = time.monotonic() + self.settle_time
            if self.on_settling is not None:
                self.on_settling()

    def _publish(
        self,
        name: str,
        files: dict[str, FileState],
        changed: set[str] | None = None,
        base: FolderSnapshot | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        """Swap in a new snapshot of a folder.

        ``changed`` names the files that differ from the current snapshot (None: unknown, or
        a new folder); with few changed entries the lookup is updated, not rebuilt. ``base``
        stands for the current snapshot of a folder not indexed yet (the cached one).
        ``lookup``, when given, is the lookup of exactly ``files``' entries, built already.
        """
        if lookup is not None:
            self._folders[name] = FolderSnapshot(name, lookup, MappingProxyType(files))
            return
        old = self._folders.get(name, base)
        if old is not None and changed is None:
            changed = {
                f for f in old.files.keys() | files.keys() if old.files.get(f) is not files.get(f)
            }
        if old is not None and changed is not None:
            removed = [e for f in changed if f in old.files for e in old.files[f].entries]
            added = [e for f in changed if f in files for e in files[f].entries]
            if len(removed) + len(added) <= max(1000, len(old.entries) // 4):
                lookup = old.lookup.replace(removed, added)
        if lookup is None:
            lookup = Lookup.build(e for state in files.values() for e in state.entries)
        self._folders[name] = FolderSnapshot(name, lookup, MappingProxyType(files))

    def _folder_lock(self, folder: Path) -> contextlib.AbstractContextManager[bool]:
        """Hold the folder's ``lockfile`` shared while reading (:func:`folder_lock`)."""
        return folder_lock(folder, self.lock_timeout)


__all__ = [
    "LOCKFILE",
    "FileState",
    "FolderSnapshot",
    "LockBusy",
    "WorklistStore",
    "is_safe_ae_title",
    "unexpected_reason",
]
