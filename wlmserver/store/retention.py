"""Retention runs: move worklist files whose every step is past retention to an archive folder.

Hiding old steps needs no run: the C-FIND handler asks
:meth:`~wlmserver.matching.retention.RetentionPolicy.hides` of each candidate, on the day it
answers. A *run* does what hiding cannot, when ``--archive-folder DIR`` is given: it moves the
files that serve nothing any more out of the AE folders, so that the folders (and the index)
do not grow for ever. Files are moved, never deleted:

- a file moves only when it serves at least one step and **every** step it serves is past
  retention (:meth:`~wlmserver.matching.retention.RetentionPolicy.expires_file`); a file with
  one current step stays, and only its old steps are hidden; a file that serves nothing (not
  readable, every item rejected) has no date and stays where an administrator sees it;
- it goes to ``DIR/<AE title>/<file name>``; when that name is taken, ``<stem>.1<suffix>``,
  ``<stem>.2<suffix>`` ... : an archived file is never overwritten;
- within one file system it is hard-linked to its new name (which fails, rather than
  overwrites, when the name was taken meanwhile) and then unlinked; across file systems it is
  copied to a temporary name in the archive, flushed and fsync'ed, linked to its name, and
  only then is the source unlinked: there is always one complete copy;
- it moves only if it is still the version the index judged (same size, times and inode): a
  file a RIS re-wrote meanwhile is judged again at the next run;
- the folder's ``lockfile``, when there is one, is held exclusively while its files move, as
  a wlmscpfs-era writer holds it, and the index's write lock with it
  (:meth:`WorklistStore.writing`);
- symbolic links are not moved (what they point to would stay behind), and archive paths
  are never followed through one: an ``<archive>/<AET>`` that is a link (into the database,
  say) is refused with one warning, and each move works inside that folder opened once,
  without following links (:func:`move_to_archive`).

A moved file is removed from the index at once (in inotify and in ``--poll`` mode alike); the
watcher's event for it then finds nothing to do.

:class:`RetentionRuns` runs once when the first index is complete, then every
:attr:`~RetentionRuns.interval` seconds (an hour by default) and just after local midnight,
when the steps of one more day fall past retention, on a thread of its own. Each run logs one
INFO line (steps hidden and files moved, per AE folder: counts only) and one WARNING per file
that cannot be moved (which, and why), once per version of the file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from wlmserver.matching.entry import Entry
from wlmserver.matching.retention import RetentionPolicy, scheduled_date
from wlmserver.store.files import Signature
from wlmserver.store.index import WorklistStore
from wlmserver.store.listing import signature_of
from wlmserver.store.mpps import folder_problem
from wlmserver.store.reader import LockBusy, folder_lock

LOGGER = logging.getLogger(__name__)

_SPS_ID = 0x00400009
#: How often a run happens (besides at start and just after local midnight), in seconds.
DEFAULT_INTERVAL = 3600.0
FOLDER_MODE = 0o700
_TEMPORARY = ".tmp"
_COPY_CHUNK = 1024 * 1024


def archive_problem(folder: Path, root: Path) -> str | None:
    """Why ``folder`` cannot be the archive folder of the database ``root``, or None.

    The database root or an AE folder (or a folder inside one) would serve the archived files
    again, or mix them with files being served.

    Examples
    --------
    >>> archive_problem(Path("/db/.archive"), Path("/db")) is None
    True
    >>> archive_problem(Path("/srv/archive"), Path("/db")) is None
    True
    >>> archive_problem(Path("/db/CT01/old"), Path("/db"))
    'it is inside the AE folder CT01 of the database'
    >>> archive_problem(Path("/db"), Path("/db"))
    'it is the database root'
    """
    return folder_problem(folder, root)


@dataclass(frozen=True)
class HiddenStep:
    """One step past retention, as reports name it (no patient data).

    Attributes
    ----------
    item : int
        Its item in the file's Scheduled Procedure Step Sequence, counted from 1.
    sps_id : str
        Its Scheduled Procedure Step ID (0040,0009), or ``""``.
    start_date : str
        Its Scheduled Procedure Step Start Date, ``YYYY-MM-DD``.
    """

    item: int
    sps_id: str
    start_date: str


@dataclass(frozen=True)
class FilePlan:
    """What retention does with one file that has steps past retention.

    Attributes
    ----------
    folder : str
        The AE folder.
    name : str
        The file name.
    hidden : tuple of HiddenStep
        Its steps past retention.
    served : int
        How many steps it serves in all.
    moves : bool
        Whether the whole file is past retention and an archive folder is set: it moves.
    """

    folder: str
    name: str
    hidden: tuple[HiddenStep, ...]
    served: int
    moves: bool


def hidden_step(entry: Entry) -> HiddenStep:
    """How a report names a step: item number, SPS ID and start date."""
    ids = entry.sps.text(_SPS_ID)
    start = scheduled_date(entry)
    return HiddenStep(entry.item + 1, ids[0] if ids else "", start.isoformat() if start else "")


def plan_file(
    folder: str,
    name: str,
    entries: tuple[Entry, ...],
    policy: RetentionPolicy,
    today: date,
    *,
    archive: bool,
) -> FilePlan | None:
    """What retention does with one file's served entries on ``today``; None: nothing.

    Parameters
    ----------
    folder, name : str
        The AE folder and the file name.
    entries : tuple of Entry
        The steps the file serves.
    policy : RetentionPolicy
        Which steps are past retention.
    today : datetime.date
        The reference day.
    archive : bool
        Whether an archive folder is set (else no file moves).
    """
    hidden = policy.hidden(entries, today)
    if not hidden:
        return None
    moves = archive and len(hidden) == len(entries)
    steps = tuple(hidden_step(e) for e in hidden)
    return FilePlan(folder, name, steps, len(entries), moves)


def plan_folder(
    folder: str,
    files: Mapping[str, tuple[Entry, ...]],
    policy: RetentionPolicy,
    today: date,
    *,
    archive: bool,
) -> list[FilePlan]:
    """:func:`plan_file` for each file of an AE folder (file name -> served entries), in
    file name order, leaving out files retention does nothing with."""
    plans = (
        plan_file(folder, name, files[name], policy, today, archive=archive)
        for name in sorted(files)
    )
    return [p for p in plans if p is not None]


# --------------------------------------------------------------------------- moving a file
def _names(name: str) -> Iterator[str]:
    """``name``, then ``<stem>.1<suffix>``, ``<stem>.2<suffix>`` ..."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no suffix (or a leading dot only)
        stem, dot, suffix = name, "", ""
    yield name
    yield from (f"{stem}.{n}{dot}{suffix}" for n in itertools.count(1))


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<n><suffix>`` with the first ``n`` not taken.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "a.wl").write_bytes(b"")
    ...     free_name(Path(d), "a.wl").name, free_name(Path(d), "b.wl").name
    ('a.1.wl', 'b.wl')
    """
    return next(folder / n for n in _names(name) if not os.path.lexists(folder / n))


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _taken(folder_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=folder_fd)
    except FileNotFoundError:
        return False
    return True


def _free_name_at(folder_fd: int, name: str) -> str:
    """:func:`free_name` inside the folder open as ``folder_fd``."""
    return next(n for n in _names(name) if not _taken(folder_fd, n))


def _link_to_free_name(source: Path | str, folder_fd: int, name: str, from_fd: int | None) -> str:
    """Hard-link ``source`` (relative to ``from_fd`` when given) to a free name in the folder
    open as ``folder_fd`` (never replacing one) and return that name; raises OSError
    (``EXDEV`` across file systems)."""
    while True:
        target = _free_name_at(folder_fd, name)
        try:
            os.link(source, target, src_dir_fd=from_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
        except FileExistsError:
            continue  # taken meanwhile: the next free one
        return target


def _copy_in(source: Path, folder_fd: int) -> str:
    """A complete, fsync'ed copy of ``source`` under a temporary name in the folder open as
    ``folder_fd``; that name."""
    temporary = f".{source.name}.{secrets.token_hex(4)}{_TEMPORARY}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    out = os.open(temporary, flags, 0o600, dir_fd=folder_fd)
    try:
        with open(source, "rb") as src, open(out, "wb", closefd=False) as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
            dst.flush()
            os.fsync(out)
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder_fd)
        raise
    os.close(out)
    return temporary


def _open_archive_folder(folder: Path) -> int:
    """Open (make, 0700, when absent) an AE title's archive folder, ``<archive>/<AET>``,
    without following a symbolic link in its place; its file descriptor.

    The archive folder itself is the administrator's path (it may be a link, and is checked
    at start to lie outside the AE folders); below it, a link would lead the move anywhere: an
    ``<archive>/CT01`` linked into the database made retention move CT01's old files into
    another AE folder, served again.

    Raises
    ------
    OSError
        ``ELOOP`` when it is a symbolic link, or why it cannot be made or opened.
    """
    folder.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    parent = os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder.name, FOLDER_MODE, dir_fd=parent)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(folder.name, flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(folder):
                raise OSError(
                    errno.ELOOP, f"{folder} is a symbolic link: archive paths are not followed"
                ) from None
            raise
    finally:
        os.close(parent)


def archive_link_problem(folder: Path) -> str | None:
    """Why the archive folder of an AE title may not be used, when it is a symbolic link in
    place of a folder (see :func:`_open_archive_folder`); else None."""
    if os.path.islink(folder):
        return f"{folder} is a symbolic link: archive paths are not followed"
    return None


def move_to_archive(source: Path, folder: Path) -> Path:
    """Move one file into ``folder`` (made, 0700, when absent) without ever deleting it
    before a complete copy exists, nor overwriting a file there; returns where it went.

    Within one file system: a hard link to the free name, then the source unlinked. Across
    file systems (or where hard links are not supported): a copy to a temporary name,
    fsync'ed, linked to the free name, the temporary name and then the source unlinked. Every
    step inside ``folder`` is taken relative to it, opened once: a symbolic link in its place
    (or one put there meanwhile) is never followed.

    Raises
    ------
    OSError
        It could not be moved (``ELOOP``: ``folder`` is a symbolic link); the source is
        still in place (at worst a copy is in the archive as well).
    """
    folder_fd = _open_archive_folder(folder)
    try:
        try:
            target = _link_to_free_name(source, folder_fd, source.name, None)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            temporary = _copy_in(source, folder_fd)
            try:
                target = _link_to_free_name(temporary, folder_fd, source.name, folder_fd)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder_fd)
        with contextlib.suppress(OSError):  # not every file system can sync a folder
            os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    os.unlink(source)
    _fsync_folder(source.parent)
    return folder / target


# --------------------------------------------------------------------------- runs
@dataclass
class RunSummary:
    """What one retention run found and did, per AE folder (counts only).

    Attributes
    ----------
    cutoff : datetime.date
        The oldest scheduled date kept.
    hidden : dict of str to int
        Steps past retention, by AE folder (those of moved files included).
    moved : dict of str to int
        Files moved to the archive folder, by AE folder.
    failed : dict of str to int
        Files past retention that could not be moved, by AE folder.
    """

    cutoff: date
    hidden: dict[str, int] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def line(self, archive: Path | None) -> str:
        """The run's one log line."""
        folders = sorted(self.hidden)
        parts = []
        for name in folders:
            part = f"{name} {self.hidden[name]} steps hidden"
            if archive is not None:
                part += f", {self.moved.get(name, 0)} files moved"
                if self.failed.get(name):
                    part += f", {self.failed[name]} could not be"
            parts.append(part)
        where = f" to {archive}" if archive is not None and any(self.moved.values()) else ""
        said = "; ".join(parts) if parts else "nothing past retention"
        return f"retention (steps scheduled before {self.cutoff.isoformat()}){where}: {said}"


class RetentionRuns:
    """Retention runs over a :class:`WorklistStore`, on a thread of its own.

    Parameters
    ----------
    store : WorklistStore
        The index (its current snapshots say which files are past retention).
    policy : RetentionPolicy
        Which steps are past retention (active: ``days`` set).
    archive : Path or None
        The archive folder (``--archive-folder``); None: nothing moves, a run only reports.
    interval : float
        Seconds between runs (besides the one just after local midnight).
    clock : callable, optional
        Today's date (default :meth:`datetime.date.today`), for tests.

    Notes
    -----
    :meth:`start` after the watcher started; the first run waits for the first index.
    :meth:`stop` joins the thread (a move in progress finishes first). :meth:`run` runs once,
    in the calling thread.
    """

    def __init__(
        self,
        store: WorklistStore,
        policy: RetentionPolicy,
        archive: Path | None,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], date] = date.today,
    ) -> None:
        self.store = store
        self.policy = policy
        self.archive = archive
        self.interval = interval
        self.clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wlmserver-retention", daemon=True)
        #: (AE folder, file name, signature) already warned about: once per file version
        self._warned: set[tuple[str, str, Signature | None]] = set()
        #: the steps hidden per AE folder at the last run (to log only what changed)
        self._last_hidden: dict[str, int] = {}

    def start(self) -> None:
        """Start the runs: the first once the first index is complete."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the runs and join the thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self.store.ready.wait(0.2):
            if self._stopping.is_set():
                return
        while not self._stopping.is_set():
            try:
                self.run()
            except Exception:  # the runs must outlive any surprise
                LOGGER.exception("retention: unexpected error in a run")
            self._stopping.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Seconds to the next run: the interval, or just past local midnight if sooner."""
        now = datetime.now()
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time())
        return max(1.0, min(self.interval, (midnight - now).total_seconds() + 1.0))

    def run(self, today: date | None = None) -> RunSummary:
        """One retention run: move the files past retention (with an archive folder), and log
        one line if it hid or moved anything (see :meth:`_worth_a_line`).

        Parameters
        ----------
        today : datetime.date, optional
            The reference day (default: the clock's).

        Returns
        -------
        RunSummary
            What was hidden and moved, by AE folder.
        """
        today = today or self.clock()
        cutoff = self.policy.cutoff(today)
        if cutoff is None:
            raise ValueError("a retention run needs a policy with days")
        summary = RunSummary(cutoff)
        for snapshot in self.store.snapshots():
            files = {name: state.entries for name, state in snapshot.files.items()}
            plans = plan_folder(
                snapshot.name, files, self.policy, today, archive=self.archive is not None
            )
            summary.hidden[snapshot.name] = sum(len(p.hidden) for p in plans)
            moving = [p for p in plans if p.moves]
            if moving and self.archive is not None:
                moved, failed = self._move_folder(snapshot.name, moving, today)
                summary.moved[snapshot.name] = moved
                summary.failed[snapshot.name] = failed
        if self._worth_a_line(summary):
            LOGGER.info("%s", summary.line(self.archive))
        return summary

    def _worth_a_line(self, summary: RunSummary) -> bool:
        """Whether a run is logged: only when it hid steps that the run before did not (the
        first run: any), or moved files, or could not move some; a run that changed nothing
        is silent (it comes hourly)."""
        hidden = {name: count for name, count in summary.hidden.items() if count}
        changed = hidden != self._last_hidden
        self._last_hidden = hidden
        moved = any(summary.moved.values()) or any(summary.failed.values())
        return moved or (changed and bool(hidden))

    def _move_folder(self, name: str, plans: Iterable[FilePlan], today: date) -> tuple[int, int]:
        """Move a folder's files past retention, under its lockfile; (moved, failed).

        Each file is judged again under the locks, on the index's state of it then, and moves
        only if it is still that version on disk."""
        assert self.archive is not None
        folder_path = self.store.root / name
        target = self.archive / name
        moved = failed = 0
        plans = list(plans)
        linked = archive_link_problem(target)
        if linked is not None:  # once, until it is mended: every file of the folder stays
            if (name, "", None) not in self._warned:
                self._warned.add((name, "", None))
                LOGGER.warning(
                    "retention: %s: %d files past retention not moved: %s", name, len(plans), linked
                )
            return 0, len(plans)
        self._warned.discard((name, "", None))
        try:
            with (
                self.store.writing(),
                folder_lock(folder_path, self.store.lock_timeout, exclusive=True),
            ):
                snapshot = self.store.folder(name)
                for plan in plans:
                    state = snapshot.files.get(plan.name) if snapshot is not None else None
                    if state is None or not self.policy.expires_file(state.entries, today):
                        continue  # gone, or re-written with a current step, meanwhile
                    path = folder_path / plan.name
                    problem = self._move_problem(path, state.signature)
                    if problem == "":
                        continue  # changed or gone since it was read: its event says how
                    if problem is None:
                        try:
                            move_to_archive(path, target)
                        except OSError as exc:
                            problem = f"cannot move it ({exc.strerror or exc})"
                    if problem is not None:
                        failed += 1
                        self._warn(name, plan.name, state.signature, problem)
                        continue
                    moved += 1
                    self.store.remove_file(path)
        except LockBusy:
            LOGGER.warning(
                "retention: %s: lockfile held by a writer; %d files past retention not moved "
                "(next run)",
                name,
                len(plans),
            )
            return moved, len(plans) - moved
        except OSError as exc:
            LOGGER.warning(
                "retention: %s: cannot hold its lockfile as a writer (%s); %d files past "
                "retention not moved",
                name,
                exc.strerror or exc,
                len(plans),
            )
            return moved, len(plans) - moved
        return moved, failed

    @staticmethod
    def _move_problem(path: Path, signature: Signature) -> str | None:
        """Why a file judged past retention may not be moved now; None: it may; ``""``: it
        changed or went away since the index read it (nothing to warn about: the watcher
        brings the new version in, and the next run judges it)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            return f"cannot stat it ({exc.strerror or exc})"
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link: not moved (what it points to would stay behind)"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if signature_of(st) != signature:
            return ""
        return None

    def _warn(self, folder: str, name: str, signature: Signature, problem: str) -> None:
        key = (folder, name, signature)
        if key in self._warned:
            return
        self._warned.add(key)
        LOGGER.warning("retention: %s/%s past retention, not moved: %s", folder, name, problem)
