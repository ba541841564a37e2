"""Reading a dropped file safely, and what a reader of a drop format gives back.

Every reader of dropped files (:mod:`wlmserver.store.formats`) reads through
:func:`read_file_bytes`, so the rules for what is read at all live in one place, and every
reader answers with a :class:`FileResult` or a :class:`WorklistFileError` whose message is the
one log line that says why a file is not served.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from wlmserver.matching.entry import Entry

Signature = tuple[int, int, int, int]
"""What says a file changed: ``(size, mtime_ns, inode, ctime_ns)``, from one ``stat``."""


class WorklistFileError(Exception):
    """The file cannot be served at all; the message says why, for one log line."""


class FileCutShort(WorklistFileError):
    """The file is empty or ends before its structure does: perhaps still being written.

    The store waits a settle time before it warns about such a file (a writer that writes in
    several flushes is not a problem), and warns once if the file is still cut short then.
    """


@dataclass(frozen=True)
class FileResult:
    """What a worklist file yields.

    Attributes
    ----------
    entries : tuple of Entry
        The entries to serve, in item order.
    problems : tuple of str
        One reason per item not served (or served despite being incomplete).
    """

    entries: tuple[Entry, ...]
    problems: tuple[str, ...]


class FileState(NamedTuple):
    """What the index knows of one file (a named tuple: the index cache makes 100,000 of them
    in one C call).

    Attributes
    ----------
    signature : tuple of int
        ``(size, mtime_ns, inode, ctime_ns)`` when the file was read. The change time is
        there for tools that restore a file's modification time after writing it in place
        (``touch -r``, ``rsync -t``): nobody can set it, so such a write still shows.
    entries : tuple of Entry
        The entries it serves (empty when rejected).
    problem : str or None
        Why the file, or some of its items, is not served.
    cut_short : bool
        The file was empty or ended early when read: perhaps still being written.
    """

    signature: Signature
    entries: tuple[Entry, ...]
    problem: str | None = None
    cut_short: bool = False


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


#: Files larger than this are not read (``--max-file-size``). A worklist file is a few
#: kilobytes; a 200 MB one cost 17 s of CPU under the index's write lock.
DEFAULT_MAX_FILE_SIZE = 16 * 1024 * 1024


def describe_size(size: int) -> str:
    """A byte count for a person.

    Examples
    --------
    >>> describe_size(512), describe_size(16 * 1024 * 1024), describe_size(1536)
    ('512 bytes', '16 MiB', '1.5 KiB')
    """
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def _too_large(size: int, limit: int) -> WorklistFileError:
    return WorklistFileError(
        f"{describe_size(size)}, more than the {describe_size(limit)} a file may have "
        "(--max-file-size): not read"
    )


def read_file_bytes(path: str | Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes:
    """The bytes of a dropped file, read only if it is a regular file of at most ``max_size``.

    Every reader of dropped files reads through here. The file is opened without blocking
    and checked on the open descriptor (after any symbolic link is followed), so a FIFO named
    ``x.wl`` cannot block the reader, and a link to ``/dev/zero`` is not read until memory runs
    out: both are refused, saying what they are. A file larger than ``max_size`` is refused
    before anything is read, and one that grows past it while read is not read further.

    Raises
    ------
    WorklistFileError
        Not a regular file, or too large.
    OSError
        It cannot be opened or read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = next((n for test, n in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise WorklistFileError(f"{kind}, not a regular file: not read")
    if st.st_size > max_size:
        os.close(fd)
        raise _too_large(st.st_size, max_size)
    with open(fd, "rb", closefd=True) as handle:
        # one read of what fstat said (a read of max_size would allocate all of it at once);
        # the rest, bounded, only if the file grew meanwhile: what is checked is what is parsed
        data = handle.read(st.st_size + 1)
        if len(data) > st.st_size:
            data += handle.read(max_size + 1 - len(data))
    if len(data) > max_size:
        raise _too_large(len(data), max_size)
    return data
