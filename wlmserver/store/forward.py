"""The on-disk queue of MPPS messages to forward to another MPPS SCP (the RIS).

Every N-CREATE and N-SET the server accepted (after :class:`~wlmserver.store.mpps.MppsStore`
stored it) is appended here as one file, and deleted only once the RIS acknowledged it, so
that nothing is lost while the RIS is down, or when either side restarts. This module is the
files alone, no network: :mod:`wlmserver.service.forwarder` sends them.

One message, one DICOM Part 10 file (explicit VR little endian, readable with ``dcmdump``)
in ``<mpps folder>/forward/``, named ``<sequence>-<create|set>-<SOP Instance UID>.dcm``:

- the sequence number is twenty digits, one more than the highest held (pending or failed),
  so the queue's order (an N-CREATE before the N-SETs of its instance, as they were accepted)
  survives a restart, and the names sort as the numbers do;
- the data set is the request's: the N-CREATE Attribute List or the N-SET Modification List
  (PS3.4 F.7.2.1, F.7.2.2); the file meta information names the SOP Class and Instance
  (MediaStorageSOPClassUID, MediaStorageSOPInstanceUID) and the request's kind (Private
  Information (0002,0102) under :data:`CREATOR_UID`), so the file says everything by itself
  and its name is checked against it.

A file is written whole or not at all, as the MPPS store's: a temporary dot-name in the same
folder (0600, exclusive), flushed and fsync'ed, renamed with :func:`os.replace`, the folder
fsync'ed. A temporary file left by a crash is removed when the queue is opened.

**A message and its instance become durable together** (:class:`~wlmserver.store.mpps.MppsStore`
queues through :meth:`ForwardQueue.stage`): the message is first written under a *staged*
name (its name with ``.staged`` after it, which no sender lists), then the instance is written
with the message's sequence number in its file meta information (the commit point), then the
staged name is renamed to the message's (:meth:`ForwardQueue.commit`). A request refused in
between (a write failing, a limit) removes the staged file (:meth:`ForwardQueue.abort`). When
the queue is opened after a crash, a staged message whose instance names its sequence number is
committed, any other is removed (:meth:`ForwardQueue.open`): the RIS gets exactly what the
modality was told was stored. Should the rename itself fail, the message stays staged and the
queue shows no message after it (:meth:`ForwardQueue.pending`) until it can be renamed, so the
order holds.

The queue is bounded (:class:`QueueLimits`: messages and bytes, staged ones included): a
message that does not fit raises :class:`QueueFull`, and the request it belongs to is refused;
nothing queued is ever dropped.

A message the RIS refuses for good is moved to ``forward/failed/`` (same name), never
dropped: an administrator reads it there, and may move it back to resend it. The N-SETs of an
instance whose N-CREATE failed follow it there (:meth:`ForwardQueue.failed_creates`).

What the sender needs to go on after a restart is kept beside them, in ``attempts.json``
(:class:`Tries`): for each message the RIS has not accepted yet after trying, how many tries
failed, when the first did, when the next may be made, how many went unanswered (the RIS may
have applied those) and the last reason; and when the RIS last settled a message (accepted
it, or refused it for good: it was working). It is written (whole, as the messages are) only
when an attempt fails or a message with tries leaves the queue, and holds only the messages
being retried: a message sent at its first try never appears in it. Losing it loses no
message, only the schedule of their next tries.

The MPPS store never takes these files for instances: it reads only the ``*.dcm`` files of
its own folder, not of its subfolders.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian

from wlmserver.matching.mpps import MPPS_SOP_CLASS, is_valid_uid
from wlmserver.store.dicomwrite import (
    FILE_MODE,
    FOLDER_MODE,
    TEMPORARY,
    encode,
    sync_folder,
    write_bytes_atomically,
)

LOGGER = logging.getLogger(__name__)

#: The queue's folder inside the MPPS folder, and the refused messages' inside it.
FOLDER_NAME = "forward"
FAILED_NAME = "failed"
#: The sender's record of its failed tries, in the queue's folder (:class:`Tries`).
ATTEMPTS_NAME = "attempts.json"
_DIGITS = 20
_NAME = re.compile(r"([0-9]{20})-(create|set)-([0-9.]{1,64})\.dcm")
#: After a message's name while its instance is being written (see the module's docstring).
STAGED = ".staged"

#: The default bounds of the queue: 20,000 messages (about three per exam: a week of a busy
#: department's exams while the RIS is down) and 1 GiB.
DEFAULT_MAX_MESSAGES = 20_000
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024

#: Private Information Creator UID (0002,0100) of the queue files: PS3.10 7.1 lets the file
#: meta information carry private information under a UID naming its creator.
CREATOR_UID = "2.25.211302760596546146011410883283542377953"


class Kind(str, Enum):
    """Which DIMSE request a message is (PS3.7 10.1.5, 10.1.3)."""

    N_CREATE = "create"
    N_SET = "set"

    @property
    def label(self) -> str:
        """``N-CREATE`` or ``N-SET``."""
        return "N-CREATE" if self is Kind.N_CREATE else "N-SET"


@dataclass(frozen=True)
class QueueLimits:
    """How much the queue holds at most (``--max-forward-messages``, ``--max-forward-size``).

    Attributes
    ----------
    messages : int
        Messages waiting (or staged) at most.
    size : int
        Their bytes at most.
    """

    messages: int = DEFAULT_MAX_MESSAGES
    size: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Usage:
    """How full a folder is, against its limits.

    Examples
    --------
    >>> Usage(150, 3 * 1024 * 1024, 200, 4 * 1024 * 1024).describe("messages")
    '150 messages (limit 200, 75%), 3.0 MiB (limit 4.0 MiB, 75%)'
    """

    count: int
    size: int
    max_count: int
    max_size: int

    def describe(self, things: str) -> str:
        """The usage in words, for ``wlmserver check`` and the log."""

        def share(used: int, limit: int) -> str:
            return f"{100 * used // limit}%" if limit > 0 else "no limit"

        return (
            f"{self.count} {things} (limit {self.max_count}, "
            f"{share(self.count, self.max_count)}), {self.size / 1048576:.1f} MiB "
            f"(limit {self.max_size / 1048576:.1f} MiB, {share(self.size, self.max_size)})"
        )


class QueueFull(Exception):
    """A message does not fit in the queue (the message says which limit)."""


def forward_folder(mpps_folder: Path) -> Path:
    """The queue's folder for an MPPS folder: ``<mpps folder>/forward``."""
    return mpps_folder / FOLDER_NAME


@dataclass(frozen=True)
class Message:
    """One queued request.

    Attributes
    ----------
    sequence : int
        Its place in the queue.
    kind : Kind
        N-CREATE or N-SET.
    uid : str
        The SOP Instance UID (Affected for N-CREATE, Requested for N-SET).
    path : Path
        Its file.
    """

    sequence: int
    kind: Kind
    uid: str
    path: Path

    @property
    def name(self) -> str:
        """What the log calls it: ``N-CREATE 1.2.3``."""
        return f"{self.kind.label} {self.uid}"


@dataclass(frozen=True)
class QueueState:
    """What the queue holds.

    Attributes
    ----------
    pending : int
        Messages waiting to be sent.
    oldest : float or None
        When the oldest pending message was queued (seconds since the epoch: its file's
        modification time), or None.
    failed : int
        Messages the RIS refused for good, or set aside after trying (in ``failed/``).
    retrying : int
        Pending messages whose tries have failed so far: they are tried again later (with
        the later messages of their MPPS instance waiting for them).
    """

    pending: int
    oldest: float | None
    failed: int
    retrying: int = 0

    def describe(self, now: float | None = None) -> str:
        """The state in words, for the log and ``wlmserver check``.

        Examples
        --------
        >>> QueueState(2, 100.0, 1).describe(now=190.0)
        '2 queued (oldest 1 min 30 s ago), 1 failed'
        >>> QueueState(0, None, 0).describe()
        '0 queued, 0 failed'
        >>> QueueState(3, 100.0, 0, retrying=1).describe(now=105.0)
        '3 queued (oldest 5 s ago), 1 being retried, 0 failed'
        """
        text = f"{self.pending} queued"
        if self.oldest is not None:
            age = max(0.0, (time.time() if now is None else now) - self.oldest)
            text += f" (oldest {format_age(age)} ago)"
        if self.retrying:
            text += f", {self.retrying} being retried"
        return f"{text}, {self.failed} failed"


def format_age(seconds: float) -> str:
    """A duration, coarsely.

    Examples
    --------
    >>> format_age(5.2), format_age(90), format_age(7300), format_age(200000)
    ('5 s', '1 min 30 s', '2 h 1 min', '2 d 7 h')
    """
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@dataclass(frozen=True)
class Tries:
    """The failed tries at one message so far (the sender's record, in ``attempts.json``).

    Times are seconds since the epoch (wall clock), so that they mean the same after a
    restart.

    Attributes
    ----------
    count : int
        Tries that failed: refused with a status that may pass, or not answered.
    first : float
        When the first of them failed.
    next : float
        Not sent again before this.
    unanswered : int
        Of them, the tries the RIS did not answer (no response in time, or the association
        ended): it may have applied those.
    reason : str
        What the RIS said (or did not) at the last try; no patient data of ours (statuses,
        the RIS's ErrorComment).

    Examples
    --------
    >>> t = Tries(2, 100.0, 104.0, 1, "status 0x0110")
    >>> Tries.from_json(t.to_json()) == t
    True
    >>> Tries.from_json({"count": "2"}) is None  # not what this module writes
    True
    """

    count: int
    first: float
    next: float
    unanswered: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        """The record as JSON values."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> Tries | None:
        """A record read back, or None when it is not one."""
        if not isinstance(value, dict):
            return None
        count, unanswered = (_number(value.get(k)) for k in ("count", "unanswered"))
        first, later = (_number(value.get(k)) for k in ("first", "next"))
        reason = value.get("reason")
        if (
            count is None
            or unanswered is None
            or first is None
            or later is None
            or not isinstance(reason, str)
            or count != int(count)
            or unanswered != int(unanswered)
            or not 0 <= unanswered <= count
            or count < 1
        ):
            return None
        return cls(int(count), first, later, int(unanswered), reason)


def _number(value: object) -> float | None:
    """A finite JSON number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_name(path: Path, suffix: str = "") -> Message | None:
    """The message a file name stands for, or None for any other name (``suffix``: the
    names after a message's, :data:`STAGED`).

    Examples
    --------
    >>> parse_name(Path("q/00000000000000000007-set-1.2.3.dcm")).name
    'N-SET 1.2.3'
    >>> parse_name(Path("q/.00000000000000000007-set-1.2.3.dcm.1f2e.tmp")) is None
    True
    >>> parse_name(Path("q/00000000000000000007-set-1.2.3.dcm.staged")) is None
    True
    """
    name = path.name
    if suffix:
        if not name.endswith(suffix):
            return None
        name = name[: -len(suffix)]
    match = _NAME.fullmatch(name)
    if match is None or not is_valid_uid(match.group(3)):
        return None
    return Message(int(match.group(1)), Kind(match.group(2)), match.group(3), path)


class DamagedMessage(ValueError):
    """A queue file that cannot be sent: not DICOM, cut short, or not what its name says."""


class ForwardQueue:
    """The queue folder: append, list in order, read, delete, move to ``failed/``.

    Parameters
    ----------
    folder : Path
        The queue's folder (:func:`forward_folder`); made (0700) by :meth:`open`.

    Notes
    -----
    :meth:`open` once; then :meth:`append` and :meth:`state` from any thread (serialised by a
    lock), and the rest from the one thread that sends.

    Examples
    --------
    >>> import tempfile
    >>> queue = ForwardQueue(Path(tempfile.mkdtemp()) / "forward")
    >>> queue.open()
    0
    >>> ds = Dataset(); ds.PerformedProcedureStepStatus = "COMPLETED"
    >>> queue.append(Kind.N_SET, "1.2.3", ds).name
    'N-SET 1.2.3'
    >>> (first,) = queue.pending()
    >>> first.sequence, queue.read(first).PerformedProcedureStepStatus
    (1, 'COMPLETED')
    """

    def __init__(self, folder: Path, limits: QueueLimits | None = None) -> None:
        self.folder = folder
        self.failed_folder = folder / FAILED_NAME
        self.attempts_path = folder / ATTEMPTS_NAME
        self.limits = limits or QueueLimits()
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._opened = False
        #: The sender's record: file name -> its failed tries (see :class:`Tries`).
        self._tries: dict[str, Tries] = {}
        self._last_settled: float | None = None
        self._saving_failed = False
        #: Messages queued since :meth:`take_appended` last took them (None: not asked yet).
        self._appended: list[Message] | None = None
        #: Messages and bytes held (pending and staged), kept by this object's own changes and
        #: counted again from the folder before a message is refused.
        self._count = 0
        self._bytes = 0
        #: Committed messages whose rename failed: the queue shows nothing from the first on.
        self._unpublished: list[Message] = []

    # -- the folder

    def open(self, committed: Callable[[Message], bool] | None = None) -> int:
        """Make the folders, remove temporary files left by a crash, settle the staged
        messages, and continue the sequence after the highest number held; returns how many
        messages are pending.

        Parameters
        ----------
        committed : callable, optional
            Whether a staged message's instance was stored (its file names the message's
            sequence number): then the message is queued, else removed. None: staged messages
            are left as they are (nobody can tell).

        Raises
        ------
        OSError
            The folder cannot be made or listed.
        """
        self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        self.failed_folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        for name in os.listdir(self.folder):
            if name.startswith(".") and name.endswith(TEMPORARY):
                LOGGER.warning("MPPS forwarding: removing %s, left by an interrupted write", name)
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
        if committed is not None:
            for message in self.staged():
                self._settle(message, committed(message))
        pending = self.pending()
        highest = max(
            (m.sequence for m in (*pending, *self.failed(), *self.staged())),
            default=0,
        )
        tries, last_settled = self._read_attempts()
        names = {m.path.name for m in pending}
        with self._lock:
            self._next = itertools.count(highest + 1)
            self._unpublished = []
            self._recount()
            self._tries = {name: t for name, t in tries.items() if name in names}
            self._last_settled = last_settled
            self._opened = True
        if len(self._tries) != len(tries):  # the messages that left the queue meanwhile
            self._save()
        return len(pending)

    def _read_attempts(self) -> tuple[dict[str, Tries], float | None]:
        """``attempts.json``: the tries by file name and when the RIS last settled a message;
        nothing when it is absent or not readable (a WARNING: only the schedule is lost)."""
        try:
            document = json.loads(self.attempts_path.read_bytes())
            if not isinstance(document, dict) or document.get("format") != 1:
                raise ValueError("not a record this version writes")
            messages = document.get("messages")
            last = document.get("last_settled")
            if not isinstance(messages, dict):
                raise ValueError("no messages")
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            LOGGER.warning(
                "MPPS forwarding: %s cannot be read (%s): the messages' tries start again",
                self.attempts_path,
                exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
            )
            return {}, None
        tries = {}
        for name, value in messages.items():
            record = Tries.from_json(value)
            if record is not None and isinstance(name, str) and _NAME.fullmatch(name):
                tries[name] = record
        return tries, _number(last)

    def _settle(self, message: Message, committed: bool) -> None:
        """A staged message found at start: queued if its instance was stored, else removed."""
        final = self.folder / message.path.name.removesuffix(STAGED)
        if committed:
            os.replace(message.path, final)
            LOGGER.info(
                "MPPS forwarding: %s was stored just before the server stopped: queued",
                message.name,
            )
        else:
            with contextlib.suppress(FileNotFoundError):
                message.path.unlink()
            LOGGER.warning(
                "MPPS forwarding: %s was not stored (the server stopped while storing it; "
                "the modality was not told it succeeded): not forwarded",
                message.name,
            )
        sync_folder(self.folder)

    def _listed(self, folder: Path, suffix: str = "") -> list[Message]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        found = (
            parse_name(folder / name, suffix)
            for name in names
            if name.endswith(suffix) and (suffix or not name.endswith(STAGED))
        )
        return sorted((m for m in found if m is not None), key=lambda m: m.sequence)

    def pending(self) -> list[Message]:
        """The messages to send, in order (never a staged one, nor one after a message whose
        rename failed: see :meth:`commit`)."""
        if self._unpublished:
            self._publish()
        listed = self._listed(self.folder)
        unpublished = self._unpublished
        if unpublished:
            first = unpublished[0].sequence
            return [m for m in listed if m.sequence < first]
        return listed

    def staged(self) -> list[Message]:
        """The messages staged (being stored, or left so by a crash), in order."""
        return self._listed(self.folder, STAGED)

    def failed(self) -> list[Message]:
        """The messages moved to ``failed/``, in order."""
        return self._listed(self.failed_folder)

    def failed_creates(self) -> set[str]:
        """The SOP Instance UIDs whose N-CREATE is in ``failed/`` (their N-SETs cannot
        succeed: they follow it there)."""
        return {m.uid for m in self.failed() if m.kind is Kind.N_CREATE}

    def state(self) -> QueueState:
        """Pending count, the oldest's age, failed count, how many are being retried."""
        pending = self.pending()
        oldest = None
        for message in pending:
            with contextlib.suppress(OSError):
                oldest = message.path.stat().st_mtime
                break
        if self._opened:
            with self._lock:
                tried = set(self._tries)
        else:  # read-only (wlmserver check): as the sender last wrote it
            tried = set(self._read_attempts()[0])
        retrying = sum(1 for m in pending if m.path.name in tried)
        return QueueState(len(pending), oldest, len(self.failed()), retrying)

    def take_appended(self) -> list[Message]:
        """The messages :meth:`append` or :meth:`commit` queued since the last call, in order
        (the sender's way to see them without listing the folder); the first call starts the
        record and returns nothing, so list :meth:`pending` after it."""
        with self._lock:
            taken, self._appended = self._appended or [], []
        return taken

    # -- the sender's record of its tries

    def tries(self, message: Message) -> Tries | None:
        """The failed tries at ``message`` so far, or None (none failed)."""
        return self._tries.get(message.path.name)

    def record(self, message: Message, tries: Tries, settled: float | None = None) -> None:
        """Keep ``tries`` for ``message`` (on disk when this returns, unless the disk refuses:
        one WARNING, and the record lives on in memory). ``settled``: when the RIS last
        settled a message (accepted it, or refused it for good), kept with it."""
        with self._lock:
            self._tries[message.path.name] = tries
            if settled is not None:
                self._last_settled = settled
        self._save()

    @property
    def last_settled(self) -> float | None:
        """When the RIS last settled a message (accepted it, or refused it for good), as last
        recorded (seconds since the epoch); None: not since the record began."""
        return self._last_settled

    def _forget(self, message: Message) -> None:
        with self._lock:
            known = self._tries.pop(message.path.name, None) is not None
        if known:
            self._save()

    def _save(self) -> None:
        with self._lock:
            document = {
                "format": 1,
                "last_settled": self._last_settled,
                "messages": {name: t.to_json() for name, t in sorted(self._tries.items())},
            }
        data = json.dumps(document, indent=1).encode("utf-8")
        temporary = self.folder / f".{ATTEMPTS_NAME}.{secrets.token_hex(4)}{TEMPORARY}"
        try:
            if not self._tries:
                with contextlib.suppress(FileNotFoundError):
                    self.attempts_path.unlink()
            else:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, self.attempts_path)
            sync_folder(self.folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self._saving_failed:
                LOGGER.warning(
                    "MPPS forwarding: cannot write %s (%s): the tries are kept in memory only",
                    self.attempts_path,
                    exc.strerror or exc,
                )
            self._saving_failed = True
            return
        if self._saving_failed:
            LOGGER.info("MPPS forwarding: %s written again", self.attempts_path)
        self._saving_failed = False

    # -- one message

    def usage(self) -> Usage:
        """The messages held (pending and staged) and their bytes, against the limits."""
        return Usage(self._count, self._bytes, self.limits.messages, self.limits.size)

    def _recount(self) -> None:
        """Count the messages held from the folder (the caller holds the lock)."""
        count = size = 0
        for message in (*self._listed(self.folder), *self.staged()):
            with contextlib.suppress(OSError):
                size += message.path.stat().st_size
                count += 1
        self._count, self._bytes = count, size

    def append(self, kind: Kind, uid: str, dataset: Dataset) -> Message:
        """Queue a request after those queued; on disk (durably) when this returns.

        Parameters
        ----------
        kind : Kind
            N-CREATE or N-SET.
        uid : str
            The SOP Instance UID (valid: :func:`~wlmserver.matching.mpps.is_valid_uid`).
        dataset : Dataset
            The Attribute List or Modification List (decoded).

        Raises
        ------
        ValueError
            ``uid`` is not a valid UID.
        QueueFull
            The queue holds as much as its limits allow (nothing is queued).
        OSError
            The file cannot be written (nothing is queued).
        """
        return self.commit(self.stage(kind, uid, dataset))

    def stage(self, kind: Kind, uid: str, dataset: Dataset) -> Message:
        """Write a request as a staged message (durably; no sender sees it yet): the first
        of the steps that store an instance and its forward together (see the module's
        docstring). :meth:`commit` or :meth:`abort` it.

        Raises
        ------
        ValueError
            ``uid`` is not a valid UID.
        QueueFull
            It does not fit within the limits (nothing is written).
        OSError
            The file cannot be written, or not read back (nothing is staged).
        """
        if not is_valid_uid(uid):
            raise ValueError("not a valid SOP Instance UID")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = UID(uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.PrivateInformationCreatorUID = UID(CREATOR_UID)
        meta.PrivateInformation = kind.label.encode("ascii")
        out = Dataset()
        out.update(dataset)
        out.file_meta = meta
        data = encode(out)
        with self._lock:  # the sequence and the file go together: no gap, no reordering
            self._make_room(len(data))
            sequence = next(self._next)
            name = f"{sequence:0{_DIGITS}d}-{kind.value}-{uid}.dcm"
            staged = Message(sequence, kind, uid, self.folder / (name + STAGED))
            self._write(staged.path, data, lambda path: self._read_back(path, staged))
            self._count += 1
            self._bytes += len(data)
        return staged

    def _make_room(self, size: int) -> None:
        """Raise :class:`QueueFull` unless a message of ``size`` bytes fits (counted again
        from the folder first: the sender removed some meanwhile, or an administrator did)."""
        limits = self.limits
        for attempt in (1, 2):
            if self._count + 1 <= limits.messages and self._bytes + size <= limits.size:
                return
            if attempt == 1:
                self._recount()
        if self._count + 1 > limits.messages:
            raise QueueFull(f"the forwarding queue holds {self._count} messages (its limit)")
        raise QueueFull(
            f"the forwarding queue holds {self._bytes // 1048576} MiB (limit "
            f"{limits.size // 1048576} MiB)"
        )

    def _write(self, final: Path, data: bytes, verify: Callable[[Path], object]) -> None:
        write_bytes_atomically(final, data, verify)

    def _read_back(self, path: Path, message: Message) -> None:
        """Read a message just written the way the sender will (it raises
        :class:`DamagedMessage` rather than queue what could not be sent)."""
        self.read(Message(message.sequence, message.kind, message.uid, path))

    def commit(self, message: Message) -> Message:
        """Queue a staged message (its instance is stored); returns the queued message.

        Should the rename fail, the message stays staged, nothing after it is sent until it
        can be renamed (:meth:`pending` tries again), and the next start queues it: it is on
        disk, and so is its instance.
        """
        queued = Message(
            message.sequence,
            message.kind,
            message.uid,
            self.folder / message.path.name.removesuffix(STAGED),
        )
        with self._lock:
            try:
                os.replace(message.path, queued.path)
            except OSError as exc:
                LOGGER.error(
                    "MPPS forwarding: %s stored but cannot be queued yet (%s); nothing after it "
                    "is sent until it is",
                    message.name,
                    exc.strerror or exc,
                )
                self._unpublished.append(message)
                return queued
            if self._appended is not None:  # handed to the sender (see take_appended)
                self._appended.append(queued)
        sync_folder(self.folder)
        return queued

    def _publish(self) -> None:
        """Rename the staged messages whose rename failed, in order, while it works."""
        with self._lock:
            while self._unpublished:
                message = self._unpublished[0]
                queued = Message(
                    message.sequence,
                    message.kind,
                    message.uid,
                    self.folder / message.path.name.removesuffix(STAGED),
                )
                try:
                    os.replace(message.path, queued.path)
                except OSError:
                    return
                self._unpublished.pop(0)
                if self._appended is not None:
                    self._appended.append(queued)
        sync_folder(self.folder)

    def abort(self, message: Message) -> None:
        """Remove a staged message whose request was refused (durably). A message that
        cannot be removed stays staged (no sender sees it) and the next start removes it."""
        with self._lock:
            try:
                size = message.path.stat().st_size
                message.path.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                LOGGER.error(
                    "MPPS forwarding: cannot remove %s (%s): the next start removes it",
                    message.path,
                    exc.strerror or exc,
                )
                return
            self._count -= 1
            self._bytes -= size
        sync_folder(self.folder)

    def read(self, message: Message) -> Dataset:
        """The request's data set.

        Raises
        ------
        DamagedMessage
            The file is not DICOM, or its meta information contradicts its name.
        OSError
            It cannot be read.
        """
        data = message.path.read_bytes()
        try:
            ds = dcmread(BytesIO(data))
            meta = ds.file_meta
            uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
            label = bytes(meta.get("PrivateInformation", b"")).rstrip(b"\0 ").decode("ascii")
            out = Dataset()
            out.update(ds)  # without the file meta information
            for _ in out.iterall():  # decode now: a damaged value fails here, not in sending
                pass
        except (InvalidDicomError, ValueError, KeyError, EOFError, UnicodeDecodeError) as exc:
            raise DamagedMessage(f"not a readable DICOM file ({exc})") from None
        if uid != message.uid or label != message.kind.label:
            raise DamagedMessage("its meta information is not what its name says")
        return out

    def delete(self, message: Message) -> None:
        """Forget a message the RIS acknowledged (durably), and its tries."""
        size = 0
        with contextlib.suppress(OSError):
            size = message.path.stat().st_size
        try:
            message.path.unlink()
        except FileNotFoundError:
            pass
        else:
            self._released(size)
        sync_folder(self.folder)
        self._forget(message)

    def fail(self, message: Message) -> Path:
        """Move a message to ``failed/`` (durably), forgetting its tries (moved back, it
        starts again); returns where it is now."""
        self.failed_folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        target = self.failed_folder / message.path.name
        size = 0
        with contextlib.suppress(OSError):
            size = message.path.stat().st_size
        os.replace(message.path, target)
        self._released(size)
        sync_folder(self.failed_folder)
        sync_folder(self.folder)
        self._forget(message)
        return target

    def _released(self, size: int) -> None:
        """A message left the queue (sent, or moved to ``failed/``): its room is free."""
        with self._lock:
            self._count = max(0, self._count - 1)
            self._bytes = max(0, self._bytes - size)


def queue_state(mpps_folder: Path) -> QueueState | None:
    """The forwarding queue's state for an MPPS folder, read-only; None when it has no queue
    (forwarding never configured)."""
    folder = forward_folder(mpps_folder)
    if not folder.is_dir():
        return None
    return ForwardQueue(folder).state()


def queue_usage(mpps_folder: Path, limits: QueueLimits | None = None) -> Usage | None:
    """How full the forwarding queue of an MPPS folder is, read-only; None when it has no
    queue."""
    folder = forward_folder(mpps_folder)
    if not folder.is_dir():
        return None
    queue = ForwardQueue(folder, limits)
    with queue._lock:
        queue._recount()
    return queue.usage()
