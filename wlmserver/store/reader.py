"""One dropped file to what the index knows of it, and the lockfile readers honour.

:func:`read_state` is the whole of reading one file: whether it may be read at all (a
symbolic link out of the database root is not followed), its entries by its format, and why
it serves nothing or not everything. It logs nothing itself: it returns the lines to log, so
that the index (:mod:`wlmserver.store.index`) and the worker processes that read many files at
once (:mod:`wlmserver.store.workers`) say exactly the same of every file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wlmserver.store.files import FileCutShort, FileState, Signature, WorklistFileError
from wlmserver.store.formats import Formats

LOCKFILE = "lockfile"

Note = tuple[int, str]
"""A line to log about a file: ``(logging level, message)``."""


class LockBusy(Exception):
    """A wlmscpfs-era writer holds the folder's lockfile longer than we wait."""


def unexpected_reason(exc: BaseException) -> str:
    """A reason for a file no reader expected to fail on, without its values.

    Examples
    --------
    >>> unexpected_reason(RecursionError("maximum recursion depth exceeded"))
    'nested too deeply to read'
    """
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    if isinstance(exc, MemoryError):
        return "too large to read"
    return f"unreadable ({type(exc).__name__})"


@dataclass(frozen=True)
class ReadOptions:
    """How files are read (the store's options that change what a file serves).

    Attributes
    ----------
    formats : Formats
        The drop formats served.
    reject_incomplete : bool
        Leave out entries lacking a Type 1 attribute (``-efr``).
    max_size : int
        Files larger than this many bytes are not read.
    follow_links : bool
        Serve files whose symbolic links lead out of the database root.
    real_root : str
        The database root, its links followed.
    """

    formats: Formats
    reject_incomplete: bool
    max_size: int
    follow_links: bool
    real_root: str

    def is_inside(self, path: Path | str) -> bool:
        """Whether a path, its links followed, lies inside the database root."""
        return os.path.realpath(path).startswith(self.real_root + os.sep)


def read_state(
    path: Path, signature: Signature, options: ReadOptions, is_link: bool | None = None
) -> tuple[FileState, list[Note]]:
    """Read one file: its state, and the lines to log about it.

    Parameters
    ----------
    path : Path
        The file, in its AE folder.
    signature : tuple of int
        Its signature, from the ``stat`` this read answers.
    options : ReadOptions
        How files are read.
    is_link : bool, optional
        Whether its directory entry is a symbolic link, when the caller knows it and has
        checked that its AE folder lies inside the root: a file that is no link then lies
        inside too, and its path is not resolved again. None: unknown, the path is resolved.

    Returns
    -------
    state : FileState
        Its entries, or why it serves none (``cut_short`` when it may still be being written).
    notes : list of (int, str)
        What to log: one warning per problem, debug lines otherwise.
    """
    rel = f"{path.parent.name}/{path.name}"
    if not options.follow_links and is_link is not False and not options.is_inside(path):
        reason = "a symbolic link out of the database root: not followed (--follow-links)"
        return FileState(signature, (), reason), [(logging.WARNING, f"{rel} not served: {reason}")]
    try:
        result = options.formats.read(
            path, reject_incomplete=options.reject_incomplete, max_size=options.max_size
        )
    except FileCutShort as exc:
        # perhaps still being written: warned about only if it stays so (see the store's settle)
        state = FileState(signature, (), str(exc), cut_short=True)
        return state, [(logging.DEBUG, f"{rel} not served yet: {exc}")]
    except WorklistFileError as exc:
        return FileState(signature, (), str(exc)), [(logging.WARNING, f"{rel} not served: {exc}")]
    except OSError as exc:
        reason = f"cannot read it ({exc.strerror or exc})"
        return FileState(signature, (), reason), [(logging.WARNING, f"{rel} not served: {reason}")]
    except Exception as exc:  # one bad file is one skipped file, never a broken folder
        reason = unexpected_reason(exc)
        notes = [
            (logging.WARNING, f"{rel} not served: {reason}"),
            (logging.DEBUG, f"{rel}: reading failed\n{traceback.format_exc()}"),
        ]
        return FileState(signature, (), reason), notes
    problem = "; ".join(result.problems) or None
    notes = [(logging.WARNING, f"{rel}: {problem}")] if problem else []
    if not result.entries and not problem:
        problem = "no entries"
    notes.append((logging.DEBUG, f"{rel} indexed: {len(result.entries)} entries"))
    return FileState(signature, result.entries, problem), notes


@contextlib.contextmanager
def folder_lock(folder: Path, timeout: float, *, exclusive: bool = False) -> Iterator[bool]:
    """Hold a folder's ``lockfile`` shared while its files are read, as wlmscpfs writers
    expect; yields whether one is held (there may be none).

    With ``exclusive``, hold it as a writer does (what moving files out of the folder needs,
    :mod:`wlmserver.store.retention`): readers and writers wait meanwhile.

    Raises
    ------
    LockBusy
        A writer (or, with ``exclusive``, a reader) holds it longer than ``timeout`` seconds.
    OSError
        With ``exclusive`` only: there is a lockfile, but it cannot be opened for writing
        (an exclusive POSIX lock needs that), so it cannot be honoured.
    """
    lock_path = folder / LOCKFILE
    mode = os.O_RDWR if exclusive else os.O_RDONLY
    try:  # never blocks: a FIFO named lockfile must not stall the indexer
        fd = os.open(lock_path, mode | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        yield False  # no lockfile: nothing to honour
        return
    except OSError as exc:
        if exclusive and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise  # a lockfile writers use, which cannot be held as one of them
        yield False  # not a lockfile the reader can use: nothing to honour
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        yield False  # not a file wlmscpfs writers could lock
        return
    with open(fd, "rb") as handle:
        deadline = time.monotonic() + timeout
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.lockf(handle.fileno(), kind | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise LockBusy(str(lock_path)) from None
                time.sleep(0.02)
        try:
            yield True
        finally:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_UN)
