"""Keep every MPPS instance as a DICOM file of its own, so that it survives restarts.

One Part 10 file per SOP Instance UID, ``<folder>/<uid>.dcm``, explicit VR little endian, which
an administrator reads with ``dcmdump``. A file is written whole or not at all: to a temporary
name in the same folder (created 0600, exclusive), flushed and fsync'ed, then renamed over the
old one with :func:`os.replace` (atomic on POSIX), and the folder fsync'ed, so a crash leaves
the old instance or the new one, never half of either. Every create and set is serialised by
one lock (a modality sends a few per exam); the in-memory instance and the link to the steps
are replaced only after the file is on disk, so a failed write changes nothing.

The folder is the store's alone: the default, ``<root>/.mpps``, is inside the database root
but can never be an AE folder (an AE title cannot contain a dot, see
:func:`~wlmserver.store.index.is_safe_ae_title`), so its files are never served as worklist
entries; :func:`folder_problem` refuses a folder that is, or is inside, an AE folder.

At start, :meth:`MppsStore.load` reads every instance back; a damaged file (cut short, not
DICOM, not an MPPS instance, its UID not its name) is skipped with one log line saying which
and why, and a temporary file left by a crash is removed.

The rules (what an N-CREATE needs, what an N-SET may change) are the pure
:mod:`wlmserver.matching.mpps`; the link from scheduled steps to their performed status is its
:class:`~wlmserver.matching.mpps.PerformedSteps`, which :attr:`MppsStore.steps` keeps current.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import threading
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from wlmserver.matching.mpps import (
    MPPS_SOP_CLASS,
    Checked,
    MppsError,
    MppsStatus,
    PerformedSteps,
    PpsStatus,
    apply_set,
    check_create,
    decode,
    is_valid_uid,
    performed_from,
)
from wlmserver.store.dicomfile import Incomplete, Undecodable, parse
from wlmserver.store.dicomwrite import FOLDER_MODE, TEMPORARY, write_atomically
from wlmserver.store.index import is_safe_ae_title

LOGGER = logging.getLogger(__name__)

#: The default MPPS folder's name inside the database root: a dot-name is never an AE title.
DEFAULT_FOLDER_NAME = ".mpps"
SUFFIX = ".dcm"


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


class MppsStore:
    """The MPPS instances, on disk and in memory.

    Parameters
    ----------
    folder : Path
        The folder of its own the instances are kept in (made, 0700, when absent: see
        :meth:`load`).

    Notes
    -----
    ``store.load()`` once at start; then :meth:`create` and :meth:`set` from any thread;
    :meth:`get` and :attr:`steps` read without waiting for them.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._instances: dict[str, Dataset] = {}
        self._steps = PerformedSteps()
        self._order = itertools.count()
        #: Why the store cannot be used (its folder cannot be made or read), or None.
        self.unusable: str | None = "not loaded"

    # -- reading

    @property
    def steps(self) -> PerformedSteps:
        """The link from scheduled steps to the MPPS instances that perform them: the current
        immutable snapshot (keep it for a whole answer; it is replaced on every change)."""
        return self._steps

    def get(self, uid: str) -> Dataset | None:
        """A copy of one instance, or None."""
        instance = self._instances.get(uid)
        return None if instance is None else copy.deepcopy(instance)

    def uids(self) -> list[str]:
        """The SOP Instance UIDs held."""
        return list(self._instances)

    def __len__(self) -> int:
        return len(self._instances)

    def path(self, uid: str) -> Path:
        """The file of an instance (``uid`` must be valid: :func:`is_valid_uid`)."""
        return self.folder / f"{uid}{SUFFIX}"

    def load(self, create: bool = True, tidy: bool = True) -> int:
        """Read every instance in the folder; returns how many.

        Parameters
        ----------
        create : bool
            Make the folder now when absent (0700). Otherwise an absent folder holds no
            instance and is made at the first N-CREATE (so serving a database that never
            receives an MPPS leaves no folder behind).
        tidy : bool
            Remove temporary files left by an interrupted write (the server, at start). A
            tool reading the folder beside a running server says False: such a file may be
            the server's write in progress.

        Raises
        ------
        OSError
            The folder cannot be made or listed; the store stays unusable (every create and
            set fails with 0x0110).
        """
        try:
            if create:
                self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            names = sorted(os.listdir(self.folder)) if create or self.folder.exists() else []
        except OSError as exc:
            self.unusable = f"cannot use the MPPS folder {self.folder}: {exc.strerror or exc}"
            raise
        instances: dict[str, Dataset] = {}
        for name in names:
            path = self.folder / name
            if name.startswith(".") and name.endswith(TEMPORARY) and tidy:
                LOGGER.warning("MPPS folder: removing %s, left by an interrupted write", path)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if name.startswith(".") or not name.lower().endswith(SUFFIX):
                continue
            uid = name[: -len(SUFFIX)]
            try:
                instances[uid] = _read(path, uid)
            except (OSError, ValueError, InvalidDicomError, MppsError) as exc:
                LOGGER.warning("MPPS file %s skipped: %s", path, _reason(exc))
        performed = sorted(
            (performed_from(i) for i in instances.values()),
            key=lambda p: (p.started, p.sop_instance_uid),
        )
        with self._lock:
            self._order = itertools.count()
            ordered = [
                performed_from(instances[p.sop_instance_uid], next(self._order)) for p in performed
            ]
            self._instances = instances
            self._steps = PerformedSteps(ordered)
            self.unusable = None
        in_progress = sum(p.status is PpsStatus.IN_PROGRESS for p in ordered)
        unscheduled = sum(p.unscheduled for p in ordered)
        LOGGER.info(
            "MPPS: %d instances in %s (%d in progress, %d unscheduled)",
            len(instances),
            self.folder,
            in_progress,
            unscheduled,
        )
        return len(instances)

    # -- changing

    def create(self, uid: str | None, attributes: Dataset | None) -> Checked:
        """N-CREATE: check, write and index a new instance (PS3.4 F.7.2.1).

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
            damaged file), 0x0110 when the instance cannot be written, and what
            :func:`~wlmserver.matching.mpps.check_create` raises. Nothing is stored.
        """
        if uid is None:
            uid = str(generate_uid())
        if not is_valid_uid(uid):
            raise MppsError(MppsStatus.INVALID_OBJECT_INSTANCE, "SOP Instance UID: not valid")
        _decode(attributes)
        with self._lock:
            self._check_usable()
            if uid in self._instances or self.path(uid).exists():
                raise MppsError(
                    MppsStatus.DUPLICATE_SOP_INSTANCE, "SOP Instance UID: the instance exists"
                )
            checked = check_create(uid, attributes)
            self._store(uid, checked.instance)
        return checked

    def set(self, uid: str, modification: Dataset | None) -> Checked:
        """N-SET: check, write and index the change of an instance (PS3.4 F.7.2.2).

        A Modification List without a Specific Character Set is read in the instance's (PS3.4
        F.7.2.2.1: the N-SET uses the N-CREATE's).

        Raises
        ------
        MppsError
            0x0117 for a UID that is not valid, 0x0112 for one not held, 0x0110 when the
            instance cannot be written, and what :func:`~wlmserver.matching.mpps.apply_set`
            raises (0x0110 with Error ID A710H once COMPLETED or DISCONTINUED). Nothing is
            changed.
        """
        if not is_valid_uid(uid):
            raise MppsError(MppsStatus.INVALID_OBJECT_INSTANCE, "SOP Instance UID: not valid")
        with self._lock:
            self._check_usable()
            current = self._instances.get(uid)
            if current is None:
                raise MppsError(
                    MppsStatus.NO_SUCH_SOP_INSTANCE, "SOP Instance UID: no such MPPS instance"
                )
            if modification is not None and "SpecificCharacterSet" not in modification:
                charset = current.get("SpecificCharacterSet")
                if charset:
                    modification.SpecificCharacterSet = charset
            _decode(modification)
            checked = apply_set(current, modification)
            self._store(uid, checked.instance)
        return checked

    def _check_usable(self) -> None:
        if self.unusable is not None:
            raise MppsError(MppsStatus.PROCESSING_FAILURE, "MPPS not stored: no usable folder")

    def _store(self, uid: str, instance: Dataset) -> None:
        """Write, then publish (the caller holds the lock)."""
        try:
            self._write(uid, instance)
        except Exception as exc:
            LOGGER.error("MPPS %s: cannot write %s: %s", uid, self.path(uid), _reason(exc))
            raise MppsError(
                MppsStatus.PROCESSING_FAILURE, "cannot store the MPPS instance (disk?)"
            ) from exc
        old = self._steps.get(uid)
        order = old.order if old is not None else next(self._order)
        self._instances[uid] = instance
        self._steps = self._steps.with_performed(performed_from(instance, order))

    def _write(self, uid: str, instance: Dataset) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = UID(uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = Dataset()
        out.update(instance)
        out.file_meta = meta
        write_atomically(self.path(uid), out)


def _decode(ds: Dataset | None) -> None:
    if ds is None:
        return
    try:
        decode(ds)
    except Exception as exc:  # pydicom's lazy decoding raises many kinds
        raise MppsError(MppsStatus.PROCESSING_FAILURE, "cannot decode the attribute list") from exc


def _read(path: Path, uid: str) -> Dataset:
    """One stored instance, checked whole (every element inside the file: pydicom alone reads
    a file cut short without complaint) and checked to be the MPPS instance its name says."""
    if not is_valid_uid(uid):
        raise ValueError("its name is not a SOP Instance UID")
    data = path.read_bytes()
    try:
        parse(data)
    except (Incomplete, Undecodable) as exc:
        raise ValueError(str(exc)) from None
    ds = dcmread(BytesIO(data))
    instance = Dataset()
    instance.update(ds)  # without the file meta information
    decode(instance)
    if str(instance.get("SOPClassUID", "")) != MPPS_SOP_CLASS:
        raise ValueError("not an MPPS instance (SOP Class UID)")
    if str(instance.get("SOPInstanceUID", "")) != uid:
        raise ValueError("its SOP Instance UID is not its file name")
    if "ScheduledStepAttributesSequence" not in instance:
        raise ValueError("no Scheduled Step Attributes Sequence")
    performed_from(instance)  # raises MppsError for a status that is not one of the three
    return instance


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
