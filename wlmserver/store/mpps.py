"""Keep every MPPS instance as a DICOM file of its own, so that it survives restarts.

One Part 10 file per SOP Instance UID, ``<folder>/<uid>.dcm``, explicit VR little endian, which
an administrator reads with ``dcmdump``. A file is written whole or not at all
(:func:`~wlmserver.store.dicomwrite.write_bytes_atomically`: a temporary name in the same
folder, created 0600 and exclusive, flushed and fsync'ed, renamed with :func:`os.replace`, the
folder fsync'ed), so a crash leaves the old instance or the new one, never half of either.
Every create and set is serialised by one lock (a modality sends a few per exam); the index
is changed only after the file is on disk, so a failed write changes nothing.

**Accepted means readable back** (PS3.4 F.7.2.1.3, F.7.2.2.3: the SCP keeps what it
acknowledged). Before anything is written, the request's Specific Character Set must be one
this server reads and every text value must decode in it (else 0x0106, naming the attribute);
then the file written is read back, before it replaces the old one, exactly as the next start
reads it (:func:`index_row` and :func:`read_instance`). What does not read back is refused
(0x0110) and not stored: an acknowledged instance is never skipped at the next start.

**The instance and its forward, together.** With a forwarding queue
(:class:`~wlmserver.store.forward.ForwardQueue`, ``--mpps-forward``) the request is first
staged in the queue, then the instance is written naming the message's sequence number in
its file meta information (Private Information (0002,0102) under
:data:`~wlmserver.store.forward.CREATOR_UID`), which commits both, then the message is queued.
A failure at any step (a full disk, a limit) removes the staged message and stores nothing:
the modality gets a failure status, never a Success the RIS will not hear of; after a crash
the queue keeps a staged message only if its instance names it
(:meth:`~wlmserver.store.forward.ForwardQueue.open`).

**Bounded** (:class:`MppsLimits`): one instance's size after N-SETs, and the folder's count
and bytes (an N-CREATE that does not fit is refused with 0x0213 Resource limitation; an
N-SET is bounded by the instance's size alone, so an exam in progress can always end).

**A compact index, not the instances, in memory** (finding: 3 GB of instances were 3 GB
resident and read again before the port opened). For each instance the store keeps one
:data:`Row` of plain data (its file's signature and size, the forward sequence, status,
start and end, and the steps it performs, which
:class:`~wlmserver.matching.mpps.PerformedSteps` links for C-FIND); :meth:`MppsStore.get`
and N-SET read the file itself. At start (:meth:`MppsStore.load`, on a thread of its own
while C-ECHO and C-FIND are already served) the rows come from the index file
``<folder>/.mpps-index``, written after 1,000 changes and on a clean stop, for every file whose
signature (size, modification and change time, inode) it still matches; any other file is read
(the fast strict parser, :func:`~wlmserver.store.dicomfile.parse`). The index file is derived
data: only read when it is this server's own and whole, never answered from unchecked.

The folder is the store's alone: the default, ``<root>/.mpps``, is inside the database root
but can never be an AE folder (an AE title cannot contain a dot, see
:func:`~wlmserver.store.index.is_safe_ae_title`), so its files are never served as worklist
entries; :func:`folder_problem` refuses a folder that is, or is inside, an AE folder. A
damaged file (cut short, not DICOM, not an MPPS instance, its UID not its name) is skipped at
start with one log line saying which and why, and a temporary file left by a crash removed.

Finished instances past ``--mpps-retention-days`` move to ``<folder>/archive/``
(:meth:`MppsStore.archive_finished`), never deleted.

The rules (what an N-CREATE needs, what an N-SET may change) are the pure
:mod:`wlmserver.matching.mpps`.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import itertools
import logging
import marshal
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from wlmserver.matching.mpps import (
    MPPS_SOP_CLASS,
    Checked,
    MppsError,
    MppsStatus,
    Performed,
    PerformedSteps,
    PpsStatus,
    StepKey,
    apply_set,
    check_create,
    decode,
    is_valid_uid,
    performed_from,
)
from wlmserver.matching.record import Record
from wlmserver.store.dicomfile import (
    Incomplete,
    Undecodable,
    charset_encodings,
    charset_values,
    decode_text,
    parse,
)
from wlmserver.store.dicomwrite import (
    FOLDER_MODE,
    TEMPORARY,
    encode,
    sync_folder,
    write_bytes_atomically,
)
from wlmserver.store.forward import (
    CREATOR_UID,
    DamagedMessage,
    ForwardQueue,
    Kind,
    Message,
    QueueFull,
    Usage,
)
from wlmserver.store.index import is_safe_ae_title

LOGGER = logging.getLogger(__name__)

#: The default MPPS folder's name inside the database root: a dot-name is never an AE title.
DEFAULT_FOLDER_NAME = ".mpps"
SUFFIX = ".dcm"
#: Where finished instances past retention go, inside the MPPS folder.
ARCHIVE_NAME = "archive"
#: The index file, inside the MPPS folder (a dot-name: never taken for an instance).
INDEX_NAME = ".mpps-index"
_INDEX_MAGIC = b"wlmserver mpps index\n"
#: Bumped whenever what a row holds, or how, changes.
_INDEX_FORMAT = 1
_DIGEST_BYTES = 32

#: The default bounds (see :class:`MppsLimits`).
DEFAULT_MAX_REQUEST = 1024 * 1024
DEFAULT_MAX_INSTANCE = 4 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 100_000
DEFAULT_MAX_FOLDER = 4 * 1024 * 1024 * 1024

#: How long an N-CREATE or N-SET waits for the instances to be read at start, seconds.
LOAD_WAIT_SECONDS = 120.0
#: The index file is written again after this many changes (a crash then costs reading at
#: most these files again at the next start, not all of them).
SAVE_EVERY = 1000

#: The text VRs whose bytes are decoded in the Specific Character Set (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_SPECIFIC_CHARACTER_SET = 0x00080005
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_ACCESSION_NUMBER = 0x00080050
_REFERENCED_STUDY = 0x00081110
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_STUDY_INSTANCE_UID = 0x0020000D
_SPS_ID = 0x00400009
_START_DATE = 0x00400244
_START_TIME = 0x00400245
_END_DATE = 0x00400250
_STATUS = 0x00400252
_SCHEDULED_STEPS = 0x00400270
_REQUESTED_PROCEDURE_ID = 0x00401001
_PRIVATE_INFORMATION = 0x00020102
_FORWARDED = b"forwarded "
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_UTF8 = "ISO_IR 192"

Row = tuple[Any, ...]
"""What the index keeps of one instance, plain data (written with :mod:`marshal`):
``(uid, size, mtime_ns, inode, ctime_ns, forward, end_date, status, started, steps,
referenced_studies)``; ``steps`` are ``(study UID, requested procedure ID, SPS ID, accession
number)`` tuples, ``forward`` the sequence number of the forward message stored with this
version (0: none)."""


class FileRow(NamedTuple):
    """What the store keeps in memory of an instance's file; the rest of its :data:`Row` is
    its :class:`~wlmserver.matching.mpps.Performed`, in the link."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int
    forward: int
    """The sequence number of the forward message stored with this version (0: none)."""
    ended: str
    """Performed Procedure Step End Date, ``YYYYMMDD`` or empty."""


def default_folder(root: Path) -> Path:
    """Where MPPS instances are kept when no folder is configured: ``<root>/.mpps``."""
    return root / DEFAULT_FOLDER_NAME


def folder_problem(folder: Path, root: Path) -> str | None:
    """Why ``folder`` cannot hold MPPS files beside the database ``root``, or None.

    The database root itself, an AE folder or a folder inside one would mix MPPS files with
    worklist files.

    Examples
    --------
    >>> folder_problem(Path("/db/.mpps"), Path("/db")) is None
    True
    >>> folder_problem(Path("/db/CT01/mpps"), Path("/db"))
    'it is inside the AE folder CT01 of the database'
    """
    folder, root = folder.absolute(), root.absolute()
    with contextlib.suppress(OSError):
        folder, root = folder.resolve(), root.resolve()
    if folder == root:
        return "it is the database root"
    try:
        first = folder.relative_to(root).parts[0]
    except ValueError:
        return None  # outside the database
    if is_safe_ae_title(first):
        return f"it is inside the AE folder {first} of the database"
    return None


@dataclass(frozen=True)
class MppsLimits:
    """What the MPPS store holds at most; each refused with 0x0213 Resource limitation
    (PS3.7 10.1.5.1.6, 10.1.3.1.9) and an ErrorComment naming the option.

    Attributes
    ----------
    request : int
        Bytes of one N-CREATE Attribute List or N-SET Modification List as received
        (``--max-mpps-size``; checked by the handler before it is decoded). 1 MiB: a final
        N-SET that references every image of a 9,000-image study (about 115 bytes each in
        the Referenced Image Sequence) fits; an N-CREATE is a few KiB.
    instance : int
        Bytes of one stored instance after N-SETs (``--max-mpps-instance-size``; N-SETs
        replace attributes, so a real instance is its N-CREATE and its largest N-SET).
    instances : int
        Instances in the folder (``--max-mpps-instances``; finished ones move to the archive
        with ``--mpps-retention-days``).
    size : int
        Bytes of the instances in the folder (``--max-mpps-folder-size``), checked at N-CREATE
        (an N-SET is bounded by ``instance`` alone, so an exam in progress can always end).
    """

    request: int = DEFAULT_MAX_REQUEST
    instance: int = DEFAULT_MAX_INSTANCE
    instances: int = DEFAULT_MAX_INSTANCES
    size: int = DEFAULT_MAX_FOLDER


class Unreadable(Exception):
    """A file just written does not read back as the next start would read it."""


class MppsStore:
    """The MPPS instances: files on disk, a compact index in memory.

    Parameters
    ----------
    folder : Path
        The folder of its own the instances are kept in (made, 0700, when absent: see
        :meth:`load`).
    limits : MppsLimits, optional
        Its bounds (default :class:`MppsLimits`).
    queue : ForwardQueue or None
        With forwarding: every accepted request is staged there and committed with its
        instance (see the module's docstring); opened by :meth:`load`.
    save_every : int
        Write the index file again after this many changes.

    Notes
    -----
    :meth:`load` once at start (or :meth:`load_in_background`); then :meth:`create` and
    :meth:`set` from any thread (they wait for the load); :attr:`steps` reads without waiting.
    """

    def __init__(
        self,
        folder: Path,
        limits: MppsLimits | None = None,
        queue: ForwardQueue | None = None,
        *,
        save_every: int = SAVE_EVERY,
    ) -> None:
        self.folder = folder
        self.limits = limits or MppsLimits()
        self.queue = queue
        self.save_every = save_every
        self._lock = threading.Lock()
        self._saving = threading.Lock()
        self._files: dict[str, FileRow] = {}
        self._bytes = 0
        self._changes = 0
        self._steps = PerformedSteps()
        self._order = itertools.count()
        self._loading = False
        self._cancelled = threading.Event()
        #: Set once :meth:`load` has finished (whether or not the folder could be used).
        self.ready = threading.Event()
        #: Why the store cannot be used (its folder cannot be made or read), or None.
        self.unusable: str | None = "not loaded"

    # -- reading

    @property
    def steps(self) -> PerformedSteps:
        """The link from scheduled steps to the MPPS instances that perform them: the current
        immutable snapshot (keep it for a whole answer; it is replaced on every change)."""
        return self._steps

    def get(self, uid: str) -> Dataset | None:
        """One instance, read from its file; None when it is not held (or not readable)."""
        if uid not in self._files:
            return None
        try:
            return read_instance(self.path(uid).read_bytes(), uid)
        except (OSError, ValueError, InvalidDicomError, MppsError) as exc:
            LOGGER.warning("MPPS file %s cannot be read: %s", self.path(uid), _reason(exc))
            return None

    def uids(self) -> list[str]:
        """The SOP Instance UIDs held."""
        return list(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def path(self, uid: str) -> Path:
        """The file of an instance (``uid`` must be valid: :func:`is_valid_uid`)."""
        return self.folder / f"{uid}{SUFFIX}"

    def forward_of(self, uid: str) -> int:
        """The sequence number of the forward message stored with an instance's current
        version (0: none, or no such instance)."""
        held = self._files.get(uid)
        return 0 if held is None else held.forward

    def usage(self) -> Usage:
        """The instances held and their bytes, against the limits."""
        return Usage(len(self._files), self._bytes, self.limits.instances, self.limits.size)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Wait for a load in progress; whether none is (a store never loaded: True)."""
        return not self._loading or self.ready.wait(timeout)

    # -- loading

    @property
    def dirty(self) -> bool:
        """Whether the index file is older than the index (see :meth:`save_index`)."""
        return self._changes > 0

    def load_in_background(
        self,
        create: bool = True,
        loaded: Callable[[], None] | None = None,
        failed: Callable[[OSError], None] | None = None,
    ) -> threading.Thread:
        """:meth:`load` on a thread of its own, then ``loaded()``, or ``failed(error)`` when
        the folder cannot be used (the store is then :attr:`unusable`); requests wait for it
        from now on. Returns the thread."""
        self._loading = True
        self.ready.clear()

        def run() -> None:
            try:
                self.load(create)
            except OSError as exc:
                if failed is not None:
                    failed(exc)
                return
            if loaded is not None:
                loaded()

        thread = threading.Thread(target=run, name="wlmserver-mpps-load", daemon=True)
        thread.start()
        return thread

    def load(self, create: bool = True, tidy: bool = True) -> int:
        """Build the index of the instances in the folder (and open the forwarding queue);
        returns how many.

        Parameters
        ----------
        create : bool
            Make the folder now when absent (0700). Otherwise an absent folder holds no
            instance and is made at the first N-CREATE (so serving a database that never
            receives an MPPS leaves no folder behind).
        tidy : bool
            Remove temporary files left by an interrupted write, and write the index file
            again when it is out of date (the server, at start). A tool reading the folder
            beside a running server says False and changes nothing: such a file may be the
            server's write in progress.

        Raises
        ------
        OSError
            The folder (or the queue's) cannot be made or listed; the store stays unusable
            (every create and set fails with 0x0110).
        """
        self._loading = True
        # Garbage collections while 100,000 rows are made walk all of them: a third of the
        # load (0.65 s of 2 s). Reading makes no cyclic garbage worth collecting meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._load(create, tidy)
        finally:
            if collecting:
                gc.enable()
            self._loading = False
            self.ready.set()

    def _load(self, create: bool, tidy: bool) -> int:
        started = time.perf_counter()
        try:
            if create:
                self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            exists = create or self.folder.exists()
            entries = list(os.scandir(self.folder)) if exists else []
        except OSError as exc:
            self.unusable = f"cannot use the MPPS folder {self.folder}: {exc.strerror or exc}"
            LOGGER.error("MPPS: %s", self.unusable)
            raise
        cached = self._read_index() if entries else {}
        rows: list[Row] = []
        read = 0
        cancelled = self._cancelled.is_set
        for entry in entries:
            if cancelled():
                LOGGER.info("MPPS: reading %s stopped (the server stops)", self.folder)
                return 0
            name = entry.name
            if name.startswith("."):
                if name.endswith(TEMPORARY) and tidy:
                    LOGGER.warning("MPPS folder: removing %s, left by an interrupted write", name)
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if not name.lower().endswith(SUFFIX):
                continue
            uid = name[: -len(SUFFIX)]
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError("not a regular file (a symbolic link is not followed)")
                signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                row = cached.get(uid)
                if row is None or row[1:5] != signature:
                    with open(entry.path, "rb") as stream:
                        row = index_row(stream.read(), uid, signature)
                    read += 1
                rows.append(row)
            except (OSError, ValueError, InvalidDicomError, MppsError) as exc:
                LOGGER.warning("MPPS file %s skipped: %s", entry.path, _reason(exc))
        with self._lock:
            # the instances read have arrival order 0 (ties of start time go by UID), those
            # created from now on 1, 2 ... (after them)
            self._order = itertools.count(1)
            self._steps = PerformedSteps(_performed(row, 0) for row in rows)
            self._files = {row[0]: _file_row(row) for row in rows}
            self._bytes = sum(row[1] for row in rows)
            self._changes = read if read or len(cached) != len(rows) else 0
            if self.queue is not None:
                try:
                    self.queue.open(committed=self._committed)
                except OSError as exc:
                    self.unusable = (
                        f"cannot use the forwarding queue {self.queue.folder}: "
                        f"{exc.strerror or exc}"
                    )
                    LOGGER.error("MPPS: %s", self.unusable)
                    raise
            self.unusable = None
        in_progress = sum(r[7] == PpsStatus.IN_PROGRESS.value for r in rows)
        unscheduled = sum(not r[9] for r in rows)
        LOGGER.info(
            "MPPS: %d instances in %s (%d in progress, %d unscheduled; %d files read, the "
            "others from its index) in %.2f s",
            len(rows),
            self.folder,
            in_progress,
            unscheduled,
            read,
            time.perf_counter() - started,
        )
        if self._changes and tidy:  # a tool reading beside the server writes nothing
            self.save_index()
        return len(rows)

    def cancel_load(self) -> None:
        """End a :meth:`load` in progress soon (the server stops); the store stays unusable."""
        self._cancelled.set()

    def _committed(self, message: Message) -> bool:
        """Whether a staged message was stored with its instance (see the module's docstring)."""
        return self.forward_of(message.uid) == message.sequence

    # -- the index file

    def _read_index(self) -> dict[str, Row]:
        """The rows of the index file, by UID; ``{}`` when there is none or it cannot be used
        (one line saying why: then every file is read)."""
        path = self.folder / INDEX_NAME
        try:
            with open(path, "rb") as stream:
                st = os.fstat(stream.fileno())
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    raise ValueError("it is not this server's own (owner, or writable by others)")
                data = stream.read()
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            LOGGER.warning("MPPS index %s not used: %s; reading every instance", path, exc)
            return {}
        try:
            if not data.startswith(_INDEX_MAGIC):
                raise ValueError("not an MPPS index")
            digest = data[len(_INDEX_MAGIC) : len(_INDEX_MAGIC) + _DIGEST_BYTES]
            body = data[len(_INDEX_MAGIC) + _DIGEST_BYTES :]
            if hashlib.sha256(body).digest() != digest:
                raise ValueError("damaged (its digest does not match)")
            version, rows = marshal.loads(body)
            if version != _INDEX_FORMAT:
                raise ValueError("another format")
            return {row[0]: row for row in rows}
        except (ValueError, EOFError, TypeError) as exc:
            LOGGER.warning("MPPS index %s not used: %s; reading every instance", path, exc)
            return {}

    def save_index(self) -> bool:
        """Write the index file (atomically; a failure is one warning: it is derived data);
        whether it was written."""
        with self._saving:
            with self._lock:
                if self.unusable is not None:
                    return False
                steps = self._steps
                rows = tuple(_row(uid, held, steps.get(uid)) for uid, held in self._files.items())
                changes, self._changes = self._changes, 0
            body = marshal.dumps((_INDEX_FORMAT, rows))
            data = _INDEX_MAGIC + hashlib.sha256(body).digest() + body
            try:
                write_bytes_atomically(self.folder / INDEX_NAME, data)
            except OSError as exc:
                with self._lock:
                    self._changes += changes
                LOGGER.warning(
                    "MPPS index %s not written (%s): the next start reads the instances again",
                    self.folder / INDEX_NAME,
                    exc.strerror or exc,
                )
                return False
        return True

    def _changed(self) -> None:
        """Count a change (the caller holds the lock); write the index file again, on a
        thread of its own, every :attr:`save_every` changes."""
        self._changes += 1
        if self._changes >= self.save_every and not self._saving.locked():
            threading.Thread(
                target=self.save_index, name="wlmserver-mpps-index", daemon=True
            ).start()

    # -- changing

    def create(self, uid: str | None, attributes: Dataset | None) -> Checked:
        """N-CREATE: check, write and index a new instance (PS3.4 F.7.2.1), with its forward
        message when there is a queue.

        Parameters
        ----------
        uid : str or None
            The Affected SOP Instance UID; None: the SCP assigns one (PS3.7 10.1.5.1.4).
        attributes : Dataset or None
            The Attribute List as received (decoded here).

        Returns
        -------
        Checked
            The stored instance, and the Type 2 attributes that were left out.

        Raises
        ------
        MppsError
            0x0117 for a UID that is not valid, 0x0111 for a UID that exists (also as a
            damaged file), 0x0106 for a Specific Character Set not known or a value that
            does not decode in it, 0x0213 when a limit or the disk is full, 0x0110 when the
            instance cannot be written or would not read back, and what
            :func:`~wlmserver.matching.mpps.check_create` raises. Nothing is stored.
        """
        if uid is None:
            uid = str(generate_uid())
        if not is_valid_uid(uid):
            raise MppsError(MppsStatus.INVALID_OBJECT_INSTANCE, "SOP Instance UID: not valid")
        check_text(attributes)
        _decode(attributes)
        self._wait_loaded()
        with self._lock:
            self._check_usable()
            if uid in self._files or self.path(uid).exists():
                raise MppsError(
                    MppsStatus.DUPLICATE_SOP_INSTANCE, "SOP Instance UID: the instance exists"
                )
            checked = check_create(uid, attributes)
            if len(self._files) >= self.limits.instances:
                raise MppsError(
                    MppsStatus.RESOURCE_LIMITATION,
                    f"MPPS folder full: {len(self._files)} instances (--max-mpps-instances)",
                    detail=f"{self.folder}: {self.usage().describe('instances')}",
                )
            self._store(uid, checked.instance, Kind.N_CREATE, attributes, None)
        return checked

    def set(self, uid: str, modification: Dataset | None) -> Checked:
        """N-SET: check, write and index the change of an instance (PS3.4 F.7.2.2), with its
        forward message when there is a queue.

        A Modification List without a Specific Character Set is read in the instance's (PS3.4
        F.7.2.2.1: the N-SET uses the N-CREATE's).

        Raises
        ------
        MppsError
            0x0117 for a UID that is not valid, 0x0112 for one not held, 0x0106 for a
            character set or value that does not decode, 0x0213 when the instance would
            exceed its limit or the disk is full, 0x0110 when the instance cannot be read or
            written, and what :func:`~wlmserver.matching.mpps.apply_set` raises (0x0110 with
            Error ID A710H once COMPLETED or DISCONTINUED). Nothing is changed.
        """
        if not is_valid_uid(uid):
            raise MppsError(MppsStatus.INVALID_OBJECT_INSTANCE, "SOP Instance UID: not valid")
        self._wait_loaded()
        with self._lock:
            self._check_usable()
            held = self._files.get(uid)
            if held is None:
                raise MppsError(
                    MppsStatus.NO_SUCH_SOP_INSTANCE, "SOP Instance UID: no such MPPS instance"
                )
            try:
                current = read_instance(self.path(uid).read_bytes(), uid)
            except (OSError, ValueError, InvalidDicomError, MppsError) as exc:
                raise MppsError(
                    MppsStatus.PROCESSING_FAILURE,
                    "cannot read the stored MPPS instance",
                    internal=True,
                    detail=f"{self.path(uid)}: {_reason(exc)}",
                ) from exc
            if modification is not None and "SpecificCharacterSet" not in modification:
                charset = current.get("SpecificCharacterSet")
                if charset:
                    modification.SpecificCharacterSet = charset
            check_text(modification)
            _decode(modification)
            checked = apply_set(current, modification)
            self._store(uid, checked.instance, Kind.N_SET, modification, held)
        return checked

    def _wait_loaded(self) -> None:
        if not self.wait_loaded(LOAD_WAIT_SECONDS):
            raise MppsError(
                MppsStatus.RESOURCE_LIMITATION, "still reading the MPPS folder: try again"
            )

    def _check_usable(self) -> None:
        if self.unusable is not None:
            raise MppsError(
                MppsStatus.PROCESSING_FAILURE,
                "MPPS not stored: no usable folder",
                internal=True,
                detail=self.unusable,
            )

    def _store(
        self, uid: str, instance: Dataset, kind: Kind, request: Dataset | None, old: FileRow | None
    ) -> None:
        """Stage the forward message, write the instance naming it, index it, queue the
        message; undo the staging on any failure (the caller holds the lock)."""
        message = None
        if self.queue is not None:
            try:
                message = self.queue.stage(kind, uid, request if request is not None else Dataset())
            except QueueFull as exc:
                raise MppsError(
                    MppsStatus.RESOURCE_LIMITATION,
                    "forwarding queue full: the RIS has not taken the messages",
                    detail=f"{self.queue.folder}: {exc}",
                ) from exc
            except OSError as exc:
                raise _disk_error(exc, self.queue.folder, "cannot queue it for the RIS") from exc
            except (DamagedMessage, ValueError) as exc:
                raise MppsError(
                    MppsStatus.PROCESSING_FAILURE,
                    "cannot queue it for the RIS (it would not read back)",
                    detail=_reason(exc),
                ) from exc
        queue = self.queue
        try:
            forward = message.sequence if message is not None else (old.forward if old else 0)
            row = self._write(uid, instance, forward, old)
        except Exception:
            if message is not None and queue is not None:
                queue.abort(message)
            raise
        order = next(self._order) if old is None else self._order_of(uid)
        self._files[uid] = _file_row(row)
        self._bytes += row[1] - (old.size if old else 0)
        self._steps = self._steps.with_performed(_performed(row, order))
        self._changed()
        if message is not None and queue is not None:
            queue.commit(message)

    def _order_of(self, uid: str) -> int:
        performed = self._steps.get(uid)
        return performed.order if performed is not None else next(self._order)

    def _write(self, uid: str, instance: Dataset, forward: int, old: FileRow | None) -> Row:
        """Encode, check the limits, write and read back one instance; its new row."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = UID(uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if forward:
            meta.PrivateInformationCreatorUID = UID(CREATOR_UID)
            meta.PrivateInformation = _FORWARDED + b"%020d" % forward
        out = Dataset()
        out.update(instance)
        out.file_meta = meta
        try:
            data = encode(out)
            if out.get("SpecificCharacterSet") != _UTF8 and _lost_text(out, _whole(data)):
                # a character its character set cannot encode (pydicom writes "?"): UTF-8
                # encodes every one, and the values are text by now (PS3.5 6.1.2.3)
                out.SpecificCharacterSet = _UTF8
                _forget_encodings(out)
                data = encode(out)
        except OSError as exc:
            raise _disk_error(exc, self.folder, "cannot store the MPPS instance") from exc
        except Exception as exc:  # pydicom cannot encode a value
            raise MppsError(
                MppsStatus.PROCESSING_FAILURE,
                "cannot encode the MPPS instance",
                internal=True,
                detail=_reason(exc),
            ) from exc
        limits = self.limits
        if len(data) > limits.instance:
            raise MppsError(
                MppsStatus.RESOURCE_LIMITATION,
                f"instance over {limits.instance} bytes (--max-mpps-instance-size)",
            )
        grows = len(data) - (old.size if old else 0)
        if old is None and self._bytes + grows > limits.size:
            raise MppsError(
                MppsStatus.RESOURCE_LIMITATION,
                f"MPPS folder full: {self._bytes // 1048576} MiB (--max-mpps-folder-size)",
                detail=f"{self.folder}: {self.usage().describe('instances')}",
            )
        rows: list[Row] = []

        def read_back(path: Path) -> None:
            try:
                written = path.read_bytes()
                rows.append(index_row(written, uid, (len(written), 0, 0, 0)))
                _whole(written)
            except OSError:
                raise
            except Exception as exc:
                raise Unreadable(_reason(exc)) from exc

        path = self.path(uid)
        try:
            write_bytes_atomically(path, data, read_back)
        except Unreadable as exc:
            raise MppsError(
                MppsStatus.PROCESSING_FAILURE,
                f"the instance would not read back: {exc}",
                internal=True,
                detail=f"{path}: {exc}",
            ) from exc
        except OSError as exc:
            raise _disk_error(exc, self.folder, "cannot store the MPPS instance") from exc
        try:
            st = path.stat()
            signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        except OSError:
            signature = (len(data), 0, 0, 0)  # read again at the next start
        return (rows[0][0], *signature, *rows[0][5:])

    # -- retention

    def archive_finished(self, before: str, *, keep: Iterable[str] = (), batch: int = 200) -> int:
        """Move the finished instances (COMPLETED or DISCONTINUED) that ended before a date to
        ``<folder>/archive/`` (never deleted, never overwritten); returns how many moved.

        Parameters
        ----------
        before : str
            ``YYYYMMDD``: instances whose Performed Procedure Step End Date (else Start Date)
            is earlier move.
        keep : iterable of str
            UIDs that stay, besides those whose messages are still in this store's queue
            (the RIS has not taken them).
        batch : int
            Instances moved per hold of the lock (requests are served between batches).
        """
        kept = set(keep)
        if self.queue is not None:
            kept.update(m.uid for m in (*self.queue.pending(), *self.queue.staged()))
        archive = self.folder / ARCHIVE_NAME
        steps = self._steps
        due = [
            uid
            for uid, held in list(self._files.items())
            if uid not in kept and _ended_before(held, steps.get(uid), before)
        ]
        if not due:
            return 0
        try:
            if archive.is_symlink():
                raise OSError(errno.ELOOP, "it is a symbolic link (never followed)")
            archive.mkdir(mode=FOLDER_MODE, exist_ok=True)
        except OSError as exc:
            LOGGER.warning("MPPS retention: cannot use %s: %s", archive, exc.strerror or exc)
            return 0
        moved = 0
        for start in range(0, len(due), batch):
            with self._lock:
                done: list[str] = []
                for uid in due[start : start + batch]:
                    held = self._files.get(uid)
                    if held is None or not _ended_before(held, self._steps.get(uid), before):
                        continue
                    try:
                        _move_no_overwrite(self.path(uid), archive, f"{uid}{SUFFIX}")
                    except OSError as exc:
                        LOGGER.warning(
                            "MPPS retention: cannot move %s to %s: %s",
                            self.path(uid),
                            archive,
                            exc.strerror or exc,
                        )
                        break
                    done.append(uid)
                for uid in done:
                    self._bytes -= self._files.pop(uid).size
                    self._changed()
                if done:
                    self._steps = self._steps.without(done)
                sync_folder(archive)
                sync_folder(self.folder)
            moved += len(done)
            if len(done) < len(due[start : start + batch]):
                break
        return moved


def folder_usage(folder: Path, limits: MppsLimits | None = None) -> tuple[Usage, int] | None:
    """How full an MPPS folder is (its instance files, not read), and how many instances its
    archive holds; read-only (for ``wlmserver check``); None when there is no folder."""
    limits = limits or MppsLimits()
    count = size = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.lower().endswith(SUFFIX):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                        count += 1
    except (FileNotFoundError, NotADirectoryError):
        return None
    archived = 0
    with contextlib.suppress(OSError), os.scandir(folder / ARCHIVE_NAME) as entries:
        archived = sum(1 for e in entries if e.name.lower().endswith(SUFFIX))
    return Usage(count, size, limits.instances, limits.size), archived


def _move_no_overwrite(source: Path, folder: Path, name: str) -> Path:
    """Move ``source`` into ``folder`` as ``name`` (``<stem>.1.dcm`` ... when taken): a hard
    link, which fails rather than overwrite, then the source removed."""
    stem = name[: -len(SUFFIX)]
    for n in range(1000):
        target = folder / (name if n == 0 else f"{stem}.{n}{SUFFIX}")
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            continue
        os.unlink(source)
        return target
    raise FileExistsError(errno.EEXIST, f"{name}: 1000 archived files of that name")


def _disk_error(exc: OSError, folder: Path, what: str) -> MppsError:
    """The failure status for a write that failed: 0x0213 when the disk is full, else 0x0110."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        return MppsError(
            MppsStatus.RESOURCE_LIMITATION,
            f"{what}: no space left on the disk",
            internal=True,
            detail=f"{folder}: {reason}",
        )
    return MppsError(
        MppsStatus.PROCESSING_FAILURE,
        f"{what} ({reason})",
        internal=True,
        detail=f"{folder}: {reason}",
    )


def _ended_before(held: FileRow, performed: Performed | None, before: str) -> bool:
    """Whether an instance is finished, and ended (else started) before a date."""
    if performed is None or performed.status is PpsStatus.IN_PROGRESS:
        return False
    return (held.ended or performed.started[:8]) < before


def _file_row(row: Row) -> FileRow:
    return FileRow(row[1], row[2], row[3], row[4], row[5], row[6])


def _row(uid: str, held: FileRow, performed: Performed | None) -> Row:
    """An instance's :data:`Row` again, from what the store keeps of it (for the index file)."""
    assert performed is not None
    return (
        uid,
        *held,
        performed.status.value,
        performed.started,
        tuple(tuple(step) for step in performed.steps),
        performed.referenced_studies,
    )


def _performed(row: Row, order: int) -> Performed:
    """The link's view of an instance, from its row."""
    return Performed(
        row[0],
        PpsStatus(row[7]),
        tuple(map(StepKey._make, row[9])),
        tuple(row[10]),
        row[8],
        order,
    )


# --------------------------------------------------------------------------- reading a file


def _first(values: tuple[str, ...]) -> str:
    return values[0].strip(" \0") if values else ""


def index_row(data: bytes, uid: str, signature: tuple[int, int, int, int]) -> Row:
    """What the index keeps of one instance file, read with the strict parser (every element
    inside the file, text decoded in its character set) and checked to be the MPPS instance
    its name says.

    Raises
    ------
    ValueError
        Damaged, not an MPPS instance, or not the one its name says.
    MppsError
        Its status is not one of the three.
    """
    if not is_valid_uid(uid):
        raise ValueError("its name is not a SOP Instance UID")
    try:
        record, _ = parse(data)
    except (Incomplete, Undecodable) as exc:
        raise ValueError(str(exc)) from None
    if _first(record.text(_SOP_CLASS_UID)) != MPPS_SOP_CLASS:
        raise ValueError("not an MPPS instance (SOP Class UID)")
    if _first(record.text(_SOP_INSTANCE_UID)) != uid:
        raise ValueError("its SOP Instance UID is not its file name")
    if record.vr(_SCHEDULED_STEPS) != "SQ":
        raise ValueError("no Scheduled Step Attributes Sequence")
    text = _first(record.text(_STATUS))
    try:
        status = PpsStatus(text) if text else PpsStatus.IN_PROGRESS
    except ValueError:
        raise MppsError(
            MppsStatus.INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus: not valid"
        ) from None
    steps: list[tuple[str, str, str, str]] = []
    referenced: list[str] = []
    for item in record.items(_SCHEDULED_STEPS):
        if not isinstance(item, Record):
            continue
        step = (
            _first(item.text(_STUDY_INSTANCE_UID)),
            _first(item.text(_REQUESTED_PROCEDURE_ID)),
            _first(item.text(_SPS_ID)),
            _first(item.text(_ACCESSION_NUMBER)),
        )
        if not step[1] and not step[2]:
            continue  # an item of the unscheduled case: nothing in the worklist to link to
        steps.append(step)
        for ref in item.items(_REFERENCED_STUDY):
            if isinstance(ref, Record) and _first(ref.text(_REFERENCED_SOP_INSTANCE_UID)):
                referenced.append(_first(ref.text(_REFERENCED_SOP_INSTANCE_UID)))
    start_time = _first(record.text(_START_TIME))
    started = _first(record.text(_START_DATE)) + start_time[:6].ljust(6, "0") + start_time[6:]
    return (
        uid,
        *signature,
        _forward_sequence(data),
        _first(record.text(_END_DATE)),
        status.value,
        started,
        tuple(dict.fromkeys(steps)),
        tuple(dict.fromkeys(referenced)),
    )


def _forward_sequence(data: bytes) -> int:
    """The forward sequence number in a file's meta information (0: none)."""
    if data[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(data):
        group, element, vr = struct.unpack_from("<HH2s", data, pos)
        if group != 0x0002:
            return 0
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<L", data, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value = pos + 8
        if (group << 16 | element) == _PRIVATE_INFORMATION:
            text = data[value : value + length].rstrip(b"\0 ")
            digits = text[len(_FORWARDED) :] if text.startswith(_FORWARDED) else b""
            return int(digits) if digits.isdigit() else 0
        pos = value + length
    return 0


def read_instance(data: bytes, uid: str) -> Dataset:
    """One stored instance, whole (as N-SET and :meth:`MppsStore.get` read it), checked
    first as the index reads it (:func:`index_row`)."""
    index_row(data, uid, (0, 0, 0, 0))
    return _whole(data)


def _lost_text(sent: Dataset, back: Dataset) -> bool:
    """Whether a text value of ``sent`` reads back otherwise from its encoding ``back``."""
    for element in sent:
        other = back.get(element.tag)
        if element.VR == "SQ":
            items = element.value or []
            if other is None or len(other.value or []) != len(items):
                return True
            if any(_lost_text(a, b) for a, b in zip(items, other.value, strict=True)):
                return True
        elif (
            element.VR in _CHARSET_VRS
            and element.value not in (None, "")
            and (other is None or _texts(element.value) != _texts(other.value))
        ):
            return True
    return False


def _forget_encodings(ds: Dataset) -> None:
    """Make person names text again: pydicom keeps the bytes a name was last encoded to and
    writes them again, whatever the character set says now."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or []:
                _forget_encodings(item)
        elif element.VR == "PN" and element.value not in (None, ""):
            value = element.value
            many = isinstance(value, (list, tuple)) or hasattr(value, "append")
            element.value = [str(v) for v in value] if many else str(value)


def _texts(value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) or hasattr(value, "append") else [value]
    return [str(v if v is not None else "").rstrip(" ") for v in values]


def _whole(data: bytes) -> Dataset:
    """A file's data set read by pydicom and decoded whole (without the file meta)."""
    ds = dcmread(BytesIO(data))
    instance = Dataset()
    instance.update(ds)  # without the file meta information
    decode(instance)
    performed_from(instance)  # raises MppsError for a status that is not one of the three
    return instance


# --------------------------------------------------------------------------- received text


def check_text(ds: Dataset | None) -> None:
    """Refuse a request whose Specific Character Set this server does not read, or a text
    value whose bytes do not decode in it (PS3.5 6.1, PS3.3 C.12.1.1.2), before pydicom
    decodes it (pydicom falls back to a default and replaces bytes it cannot decode).

    Raises
    ------
    MppsError
        0x0106 Invalid attribute value, naming the attribute (never its value).

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.SpecificCharacterSet = "ISO_IR 999"
    >>> check_text(ds)
    Traceback (most recent call last):
    ...
    wlmserver.matching.mpps.MppsError: SpecificCharacterSet: 'ISO_IR 999' is not a known term
    """
    if ds is not None:
        _check_text(ds, None, ())


def _check_text(ds: Dataset, inherited: list[str] | None, path: tuple[str, ...]) -> None:
    encodings = inherited
    element: Any = ds.get_item(_SPECIFIC_CHARACTER_SET)
    if element is not None:
        raw = element.value
        if isinstance(raw, bytes):
            names = charset_values(raw)
        elif isinstance(raw, str):
            names = charset_values(raw.encode("latin-1", "replace"))
        else:
            names = tuple(str(v or "") for v in (raw or ()))
        try:
            encodings = charset_encodings(names)
        except Undecodable:
            unknown = next(
                (n for n in names if n and charset_encodings_problem(n)), names[0] if names else ""
            )
            shown = repr(unknown) if unknown.isprintable() and len(unknown) <= 16 else "a value"
            raise MppsError(
                MppsStatus.INVALID_ATTRIBUTE_VALUE,
                _at(path, f"SpecificCharacterSet: {shown} is not a known term"),
                (_SPECIFIC_CHARACTER_SET,),
            ) from None
    if encodings is None:
        encodings = charset_encodings(())
    for tag in list(ds.keys()):
        try:  # an element pydicom cannot read (an unknown VR ...) is the peer's mistake
            element = ds.get_item(tag)
            vr = element.VR
        except Exception:
            keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            raise MppsError(
                MppsStatus.INVALID_ATTRIBUTE_VALUE,
                _at(path, f"{keyword}: not a readable element (PS3.5 7.1)"),
                (int(tag),),
            ) from None
        if isinstance(element, RawDataElement) and not vr:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if vr == "SQ":
            keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            try:  # pydicom reads a sequence when first asked: a malformed one fails here
                items = list(ds[tag].value)
            except Exception:
                raise MppsError(
                    MppsStatus.INVALID_ATTRIBUTE_VALUE,
                    _at(path, f"{keyword}: not a readable sequence (PS3.5 7.5)"),
                    (int(tag),),
                ) from None
            for number, item in enumerate(items, 1):
                _check_text(item, encodings, (*path, f"{keyword}[{number}]"))
            continue
        if not isinstance(element, RawDataElement) or vr not in _CHARSET_VRS:
            continue
        value = element.value
        if not value:
            continue
        try:
            decode_text(bytes(value), vr, encodings, int(tag))
        except Undecodable:
            name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            raise MppsError(
                MppsStatus.INVALID_ATTRIBUTE_VALUE,
                _at(path, f"{name}: not valid in its Specific Character Set"),
                (int(tag),),
            ) from None


def charset_encodings_problem(name: str) -> bool:
    """Whether one Specific Character Set term is not known."""
    try:
        charset_encodings((name,))
    except Undecodable:
        return True
    return False


def _at(path: tuple[str, ...], text: str) -> str:
    return ">".join((*path, text)) if path else text


def _decode(ds: Dataset | None) -> None:
    if ds is None:
        return
    try:
        decode(ds)
    except Exception as exc:  # pydicom's lazy decoding raises many kinds
        raise MppsError(MppsStatus.PROCESSING_FAILURE, "cannot decode the attribute list") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
