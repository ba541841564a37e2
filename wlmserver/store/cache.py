"""The index cache: the index kept on disk, so a restart is served in seconds, not minutes.

Indexing 100,000 files takes 12-26 s; reading back what they held takes about a second. The
cache is one file, ``DIR/index.wlmcache``, in the user's or the service's cache folder by default
(:mod:`wlmserver.config.cachedir`; ``--index-cache DIR``, ``--no-index-cache``). It is written
after a full index (once the associations waiting for it are answered, see
:meth:`~wlmserver.service.server.WorklistServer.start`), again after large changes and
periodically while the index changes (so a crash costs seconds, not a full index), and on a
clean stop; atomically (a temporary file renamed over it, mode 0600 in a folder made 0700,
since it holds patient data). A cache that cannot be written is one warning, never a failure.
At start it is read back, and every cached file's signature (size, modification time, inode,
change time) is compared with a fresh ``stat`` before its entries are used: a file changed,
added or removed while the server was down is read again or dropped, exactly as the periodic
rescan does (:meth:`WorklistStore.scan`).

What is cached is plain data (tuples of strings and numbers; the record layouts and the records
in tables, referred to by number), written with :mod:`marshal`, which makes no objects but
those (no code runs when it is read, unlike :mod:`pickle`), in one call: written in pieces it
was read back slower and larger (values alike in two pieces become two objects: 0.4 s and 25 MB
more at 100,000 entries), and the call holding the interpreter lock (1.3 s at 100,000 entries)
is why a full index's cache waits for a quiet moment. It is still only read when it is this
server's own: owned by the user the server runs as, writable by nobody else, and whole (a
digest of its contents). Another cache format (:data:`CACHE_FORMAT`, not wlmserver's version:
an upgrade keeps the cache), Python, pydicom, database root or option that changes what is
indexed (``-efr``/``-dfr``, ``--json-drops``, ``--max-file-size``,
``--follow-links``) makes it unusable, as does damage: then the database is indexed fully, with
one log line saying why. Nothing in the cache is ever answered without its file's signature
checked first.

One file for the whole index, rather than one per AE folder: one atomic rename publishes a
consistent index, one header says what it was made with, and a server moved to another database
root cannot leave another folder's patient data behind in a second file.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import marshal
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from itertools import accumulate, repeat
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pydicom

from wlmserver.matching.entry import entries_from_rows
from wlmserver.store.files import FileState
from wlmserver.store.index import FolderSnapshot, WorklistStore
from wlmserver.store.lookup import Lookup
from wlmserver.store.packing import RecordPacker, file_state, unpack_records
from wlmserver.store.packing import picked as _picked

LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The cache file's name in the cache folder.
CACHE_FILE = "index.wlmcache"
#: Bumped whenever what is cached, or how, changes.
CACHE_FORMAT = 4
_MAGIC = b"wlmserver index cache\n"
_HEADER_LENGTH_BYTES = 4
_DIGEST_BYTES = 32
_MARSHAL_VERSION = 4

Cached = dict[str, FolderSnapshot]
"""What a cache holds: AE title -> the folder's snapshot (file states and lookup), whose
files are all still to be checked against the disk (:meth:`WorklistStore.scan`)."""


class CacheUnusable(Exception):
    """The cache cannot be used; the message says why, for one log line."""


def cache_identity(store: WorklistStore) -> dict[str, object]:
    """What a cache must have been made with to be used for ``store``: its own format, the
    Python and pydicom that read files and marshal the cache, and the root and options that
    change what is indexed.

    Not wlmserver's version: an upgrade keeps the cache (its first start is as fast as a
    restart) unless :data:`CACHE_FORMAT` changed, which is bumped whenever what the modules
    that make cached data produce changes (a test keeps a digest of those modules, so that a
    change to them cannot go unnoticed; see ``tests/store/test_cache.py``).
    """
    return {
        "format": CACHE_FORMAT,
        "Python": f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}",
        "marshal": marshal.version,
        "pydicom": pydicom.__version__,
        "database root": str(store.root),
        "database root, links followed": os.path.realpath(store.root),
        "reject_incomplete": store.reject_incomplete,
        "formats": [f.name for f in store.formats.served],
        "max_file_size": store.max_file_size,
        "follow_links": store.follow_links,
    }


# --------------------------------------------------------------------------- encoding
class _Encoder(RecordPacker):
    """Index states to plain data (see :class:`~wlmserver.store.packing.RecordPacker`)."""

    def folder(self, folder: FolderSnapshot) -> list[Any]:
        """One folder, as columns: its entries in answer order, its files with the places of
        their entries in that order, and its lookup as places in it (record numbers are
        renumbered by :meth:`flat_records`, see :func:`encode`)."""
        lookup = folder.lookup
        ordered = lookup.entries
        place = {id(e): i for i, e in enumerate(ordered)}
        entries: list[Any] = [
            tuple(e.path for e in ordered),
            tuple(e.item for e in ordered),
            [self.record(e.top) for e in ordered],
            [self.record(e.sps) for e in ordered],
            tuple(e.charset for e in ordered),
            tuple(e.order for e in ordered),
        ]
        kept = [(f, s) for f, s in folder.files.items() if not s.cut_short]
        one = [(f, s) for f, s in kept if len(s.entries) == 1]
        other = [(f, s) for f, s in kept if len(s.entries) != 1]
        files = (
            # files of one entry (nearly all): names, signatures, problems, entry places
            tuple(f for f, _ in one),
            tuple(s.signature for _, s in one),
            tuple(s.problem for _, s in one),
            tuple(place[id(s.entries[0])] for _, s in one),
            # the others, a row each
            tuple(
                (f, s.signature, s.problem, tuple([place[id(e)] for e in s.entries]))
                for f, s in other
            ),
        )
        # per tag: the keys of one entry and their places, then the others (most keys of
        # patient ID and accession number have one entry)
        buckets = tuple(
            (
                tag,
                tuple(k for k, b in table.items() if len(b) == 1),
                tuple(place[id(b[0])] for b in table.values() if len(b) == 1),
                tuple(k for k, b in table.items() if len(b) > 1),
                tuple(place[id(e)] for b in table.values() if len(b) > 1 for e in b),
                tuple(len(b) for b in table.values() if len(b) > 1),
            )
            for tag, table in lookup.buckets.items()
        )
        names = (
            tuple(name for name, _, _ in lookup.names),
            tuple(place[id(e)] for _, _, e in lookup.names),
        )
        return [folder.name, entries, files, buckets, names]


def encode(folders: Mapping[str, FolderSnapshot]) -> bytes:
    """The payload of a cache: every folder's file states and lookup, as marshalled plain
    data (the lookup as places in the answer order, so it is not built again).

    Files found cut short (perhaps still being written) are left out: they are read again.
    """
    encoder = _Encoder()
    encoded = [encoder.folder(folder) for _, folder in sorted(folders.items())]
    records, place = encoder.flat_records()
    for folder in encoded:
        columns = folder[1]
        columns[2] = tuple([place[n] for n in columns[2]])
        columns[3] = tuple([place[n] for n in columns[3]])
        folder[1] = tuple(columns)
    return marshal.dumps(
        (CACHE_FORMAT, tuple(encoder.table), records, tuple(tuple(f) for f in encoded)),
        _MARSHAL_VERSION,
    )


def decode(payload: bytes) -> Cached:
    """The folder snapshots a payload of :func:`encode` holds.

    Nearly every object is made in C (:func:`map` over columns, :func:`zip`, ``itemgetter``):
    at 100,000 entries this takes about a second, most of it :func:`marshal.loads`.

    Raises
    ------
    CacheUnusable
        It is not such a payload.
    """
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise CacheUnusable(f"damaged ({exc})") from None
    if not (isinstance(data, tuple) and len(data) == 4 and data[0] == CACHE_FORMAT):
        raise CacheUnusable("not a cache of this format")
    _, table, flat, folders = data
    records = unpack_records(table, flat)

    cached: Cached = {}
    for name, entries, files, buckets, names in folders:
        paths, items, tops, spss, charsets, orders = entries
        record = records.__getitem__
        ordered = entries_from_rows(
            zip(paths, items, map(record, tops), map(record, spss), charsets, orders, strict=True)
        )
        one_names, one_signatures, one_problems, one_places, others = files
        states = dict(
            zip(
                one_names,
                map(
                    file_state,
                    zip(
                        one_signatures,
                        zip(_picked(ordered, one_places)),  # zip of one: the 1-tuples
                        one_problems,
                        repeat(False),
                    ),
                ),
                strict=True,
            )
        )
        for fname, signature, problem, places in others:
            states[fname] = FileState(signature, _picked(ordered, places), problem)
        tables = {}
        for tag, single_keys, single_places, keys, places, lengths in buckets:
            table = dict(zip(single_keys, zip(_picked(ordered, single_places)), strict=True))
            # the others: one tuple of all their entries, cut in C by slices of it
            flat = _picked(ordered, places)
            ends = list(accumulate(lengths))
            cuts = map(slice, [0, *ends[:-1]], ends)
            table.update(zip(keys, map(flat.__getitem__, cuts), strict=True))
            tables[tag] = MappingProxyType(table)
        name_keys, name_places = names
        named = _picked(ordered, name_places)
        lookup = Lookup(
            ordered,
            MappingProxyType(tables),
            tuple(zip(name_keys, map(_order_of, named), named, strict=True)),
        )
        cached[name] = FolderSnapshot(name, lookup, MappingProxyType(states))
    return cached


_order_of = attrgetter("order")


# --------------------------------------------------------------------------- the file
class IndexCache:
    """The index cache of one store, in a folder of its own.

    Parameters
    ----------
    folder : Path
        The cache folder (``--index-cache``); made (mode 0700) when first written.
    store : WorklistStore
        The index it caches.
    """

    def __init__(self, folder: Path, store: WorklistStore) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE
        self.store = store
        self._saved: dict[str, FolderSnapshot] | None = None
        self._warned_save = False

    # ------------------------------------------------------------------ loading
    def load(self) -> Cached | None:
        """The cached file states, or None (logging one line saying why) when there is no
        usable cache. Never raises: a cache that cannot be used means a full index."""
        try:
            cached = self._load()
        except FileNotFoundError:
            LOGGER.info("no index cache %s yet: indexing fully", self.path)
            return None
        except CacheUnusable as exc:
            LOGGER.warning("index cache %s not used, %s: indexing fully", self.path, exc)
            return None
        except OSError as exc:
            LOGGER.warning(
                "index cache %s not used, cannot read it (%s): indexing fully",
                self.path,
                exc.strerror or exc,
            )
            return None
        except Exception as exc:  # a cache is never worth a failed start
            LOGGER.warning(
                "index cache %s not used, unreadable (%s): indexing fully",
                self.path,
                type(exc).__name__,
            )
            LOGGER.debug("reading the index cache failed", exc_info=True)
            return None
        LOGGER.info(
            "index cache %s read: %d files in %d AE folders, each checked before use",
            self.path,
            sum(len(folder.files) for folder in cached.values()),
            len(cached),
        )
        return cached

    def _load(self) -> Cached:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.path, flags)
        with open(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            _check_owned(st)
            data = handle.read()
        return self._parse(data)

    def _parse(self, data: bytes) -> Cached:
        start = len(_MAGIC) + _HEADER_LENGTH_BYTES
        if not data.startswith(_MAGIC) or len(data) < start:
            raise CacheUnusable("not an index cache" if data else "empty")
        header_length = int.from_bytes(data[len(_MAGIC) : start], "big")
        end = start + header_length
        if len(data) < end + _DIGEST_BYTES:
            raise CacheUnusable("cut short")
        try:
            made_with = json.loads(data[start:end])
        except ValueError:
            raise CacheUnusable("damaged (its header)") from None
        if not isinstance(made_with, dict):
            raise CacheUnusable("damaged (its header)")
        _check_identity(made_with, cache_identity(self.store))
        digest = data[end : end + _DIGEST_BYTES]
        payload = memoryview(data)[end + _DIGEST_BYTES :]
        if hashlib.blake2b(payload, digest_size=_DIGEST_BYTES).digest() != digest:
            raise CacheUnusable("damaged or cut short (its digest differs)")
        return decode(payload.tobytes())

    # ------------------------------------------------------------------ saving
    def mark_current(self) -> None:
        """Take the store's current index as what the cache file holds (after a start from
        the cache that found nothing out of date): :meth:`save` writes only once it changes."""
        self._saved = self.store.published()

    def changes(self) -> int:
        """How many files the index holds differently from the cache file (changed, added or
        removed since it was last written or read); every file when it was never written."""
        folders = self.store.published()
        saved = self._saved
        if saved is None:
            return sum(len(f.files) for f in folders.values()) or 1
        count = 0
        for name in folders.keys() | saved.keys():
            now, then = folders.get(name), saved.get(name)
            if now is then:
                continue
            now_files = now.files if now is not None else {}
            then_files = then.files if then is not None else {}
            count += sum(1 for f, s in now_files.items() if then_files.get(f) is not s)
            count += sum(1 for f in then_files if f not in now_files)
        return count

    def save(self) -> bool:
        """Write the store's index, unless the cache file already holds it.

        Written to a temporary file (mode 0600) then renamed over the cache, so a crash
        leaves the old cache or the new one, never half of one. A failure is logged once (as
        a warning) and otherwise ignored: the cache only makes restarts faster.

        Returns
        -------
        bool
            Whether the cache file was written.
        """
        folders = self.store.published()
        if self._saved is not None and _same(folders, self._saved):
            return False
        try:
            with _collector_paused():
                data = self._serialize(folders)
            self._write(data)
        except Exception as exc:
            if not self._warned_save:
                self._warned_save = True
                if isinstance(exc, CacheFolderMissing):
                    reason = str(exc)
                elif isinstance(exc, OSError):
                    reason = exc.strerror or type(exc).__name__
                else:
                    reason = type(exc).__name__
                LOGGER.warning(
                    "cannot write the index cache %s (%s): restarts index fully",
                    self.path,
                    reason,
                )
            LOGGER.debug("writing the index cache failed", exc_info=True)
            return False
        self._saved = folders
        self._warned_save = False
        LOGGER.info(
            "index cache %s written: %d files",
            self.path,
            sum(len(f.files) for f in folders.values()),
        )
        return True

    def _serialize(self, folders: Mapping[str, FolderSnapshot]) -> bytes:
        payload = encode(folders)
        header = json.dumps(cache_identity(self.store), sort_keys=True).encode()
        return b"".join(
            (
                _MAGIC,
                len(header).to_bytes(_HEADER_LENGTH_BYTES, "big"),
                header,
                hashlib.blake2b(payload, digest_size=_DIGEST_BYTES).digest(),
                payload,
            )
        )

    def _write(self, data: bytes) -> None:
        _make_folder(self.folder)
        st = os.stat(self.folder)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.folder, 0o700)  # it holds patient data
        fd, temporary = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=self.folder)
        try:
            with open(fd, "wb") as handle:  # mkstemp: mode 0600
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        with contextlib.suppress(OSError):  # the rename itself, durable
            dir_fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class CacheFolderMissing(OSError):
    """The cache folder does not exist and cannot be made; the message names the folder that
    is missing and why it cannot be made there (not only the errno of the last ``mkdir``)."""


def _make_folder(folder: Path) -> None:
    """Make the cache folder (mode 0700, with its missing parents), or raise
    :class:`CacheFolderMissing` naming the real cause: which folder is missing, and why it
    cannot be made in its parent (which does not allow it, or is not a folder)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise CacheFolderMissing(f"{folder} exists and is not a folder") from None
    except OSError as exc:
        missing = folder
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        parent = missing.parent
        why = exc.strerror or type(exc).__name__
        if not parent.is_dir():
            why = f"{parent} is not a folder"
        elif not os.access(parent, os.W_OK | os.X_OK):
            why = f"{parent} is not writable by this user ({why})"
        raise CacheFolderMissing(
            f"the folder {missing} does not exist and cannot be made: {why}"
        ) from None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The garbage collector off while the cache is encoded: the millions of tuples it makes
    would set off full collections, each walking all of them (5.0 s instead of 2.6 s at
    100,000 entries); they hold no cycles, and are freed by reference counting."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _same(folders: Mapping[str, FolderSnapshot], saved: Mapping[str, FolderSnapshot]) -> bool:
    """Whether two views of the index hold the same snapshots (snapshots are immutable, and
    replaced whole on every change)."""
    return folders.keys() == saved.keys() and all(folders[k] is saved[k] for k in folders)


def _check_owned(st: os.stat_result) -> None:
    """Refuse a cache that is not a regular file of this user's, writable by nobody else."""
    if not stat.S_ISREG(st.st_mode):
        raise CacheUnusable("not a regular file")
    if st.st_uid != os.geteuid():
        raise CacheUnusable(f"owned by uid {st.st_uid}, not by this server's ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise CacheUnusable(f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})")


def _check_identity(made_with: Mapping[str, object], now: Mapping[str, object]) -> None:
    for key, value in now.items():
        if made_with.get(key) != value:
            if key == "format":
                raise CacheUnusable(
                    f"made by a wlmserver with another cache format ({made_with.get(key)!r}, "
                    f"this one writes {value!r})"
                )
            raise CacheUnusable(f"made with {key} {made_with.get(key)!r}, not {value!r}")


def log_cached_problems(store: WorklistStore, cached: Cached) -> int:
    """Log again why each file served from the cache (unchanged) is not served, or not
    wholly: the warnings a full index would have logged, so a start from the cache says the
    same. Returns how many."""
    count = 0
    for name, folder in store.published().items():
        seeded = cached.get(name)
        states = seeded.files if seeded is not None else {}
        for fname, state in folder.files.items():
            if states.get(fname) is not state or state.problem in (None, "no entries"):
                continue
            count += 1
            if state.entries or "not served" in state.problem:
                LOGGER.warning("%s/%s: %s", name, fname, state.problem)
            else:
                LOGGER.warning("%s/%s not served: %s", name, fname, state.problem)
    return count
