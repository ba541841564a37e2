"""Writing a DICOM file so that a crash leaves the old version or the new one, never half.

Every DICOM file wlmserver writes is written here: to a temporary file in the same folder (a
dot name ending in :data:`TEMPORARY`, which readers skip), synced, renamed over the final name,
read back when the caller asks (the file checked the way the next start, or the server, reads
it, before it replaces the old one), and the folder synced so that the rename is durable. Its
mode is set explicitly, whatever the writer's umask:

- what the server writes for itself (MPPS instances, :mod:`wlmserver.store.mpps`; messages
  queued for the RIS, :mod:`wlmserver.store.forward`): :data:`FILE_MODE`, 0600, in folders
  made 0700 (patient data only the server reads);
- what the server must read as another user (``wlmserver create``'s worklist files):
  :func:`served_file_mode`, 0640 in a setgid AE folder (the file gets the folder's group, the
  server's way in, as in docs/deploying.md), else 0644; a folder made for them gets
  :func:`served_folder_mode`. A umask of 077 cannot make them unreadable to the server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: The suffix of temporary files; a reader skips (and may remove) ``.*`` names ending so.
TEMPORARY = ".tmp"


def served_file_mode(folder: Path) -> int:
    """The mode of a file the server reads as another user than its writer's.

    0640 in a setgid folder, whose group the file gets (the kernel gives it at creation):
    readable by that group, the server's (docs/deploying.md: the database is ``risexport:wlmdata``
    2750, the server in ``wlmdata``), by no one else. 0644 anywhere else: the file's group is
    then the writer's, which the server need not be in; who may reach the file is left to the
    folder's own mode.
    """
    try:
        setgid = bool(folder.stat().st_mode & stat.S_ISGID)
    except OSError:
        setgid = False
    return 0o640 if setgid else 0o644


def served_folder_mode(parent: Path) -> int:
    """The mode of a folder made for files the server reads (an AE folder that
    ``wlmserver create -o`` makes): 2750 under a setgid folder (group and setgid bit
    inherited, as docs/deploying.md's ``install -d -m 2750``), else 0755."""
    try:
        setgid = bool(parent.stat().st_mode & stat.S_ISGID)
    except OSError:
        setgid = False
    return 0o2750 if setgid else 0o755


def make_served_folder(folder: Path) -> None:
    """Make ``folder`` and its missing parents with :func:`served_folder_mode` (set
    explicitly, whatever the umask); an existing folder is left as it is."""
    missing = []
    for path in (folder, *folder.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        mode = served_folder_mode(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=mode)
            os.chmod(path, mode)


def encode(ds: Dataset) -> bytes:
    """``ds`` (with its file meta) as the bytes of a Part 10 file."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_atomically(
    final: Path,
    ds: Dataset,
    *,
    mode: int = FILE_MODE,
    check: Callable[[Path], object] | None = None,
) -> None:
    """Write ``ds`` (with its file meta) to ``final`` atomically; the folder is made (0700)
    when absent. Raises what writing (or ``check``) raises, leaving no temporary file behind
    (see :func:`write_bytes_atomically`)."""
    write_bytes_atomically(final, encode(ds), verify=check, mode=mode)


def write_bytes_atomically(
    final: Path,
    data: bytes,
    verify: Callable[[Path], object] | None = None,
    *,
    mode: int = FILE_MODE,
) -> None:
    """Write ``data`` to ``final`` atomically (see the module's docstring).

    Parameters
    ----------
    final : Path
        The file's name; its folder is made (0700) when absent.
    data : bytes
        Its content.
    verify : callable, optional
        Called with the temporary file once it is synced, before it is renamed: reads it
        back (``wlmserver create`` as the server does, MPPS as the next start does); whatever
        it raises leaves ``final`` as it was.
    mode : int
        Its permission bits, set on the open file whatever the umask (default 0600: the
        server's own files; see :func:`served_file_mode` for the files it must read).

    Raises
    ------
    OSError
        The file cannot be written (``ENOSPC``: the disk is full), or what ``verify`` raises;
        no temporary file is left behind.
    """
    folder = final.parent
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    temporary = folder / f".{final.name}.{secrets.token_hex(4)}{TEMPORARY}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)  # not the umask's: the reader may be another user
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if verify is not None:
            verify(temporary)
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the folder; not possible everywhere)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
