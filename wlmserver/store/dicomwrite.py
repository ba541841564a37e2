"""Writing a DICOM file so that a crash leaves the old version or the new one, never half.

What the server itself writes (MPPS instances, :mod:`wlmserver.store.mpps`; messages queued for
the RIS, :mod:`wlmserver.store.forward`) is written here: to a temporary file in the same
folder (a dot name ending in :data:`TEMPORARY`, mode 0600), synced, read back when the caller
asks (``verify``: the file is checked the way the next start reads it, before it replaces the
old one), renamed over the final name, and the folder synced so that the rename is durable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: The suffix of temporary files; a reader skips (and may remove) ``.*`` names ending so.
TEMPORARY = ".tmp"


def encode(ds: Dataset) -> bytes:
    """``ds`` (with its file meta) as the bytes of a Part 10 file."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_atomically(final: Path, ds: Dataset) -> None:
    """Write ``ds`` (with its file meta) to ``final`` atomically; the folder is made (0700)
    when absent. Raises what writing raises, leaving no temporary file behind."""
    write_bytes_atomically(final, encode(ds))


def write_bytes_atomically(
    final: Path, data: bytes, verify: Callable[[Path], object] | None = None
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
        back; whatever it raises leaves ``final`` as it was.

    Raises
    ------
    OSError
        The file cannot be written (``ENOSPC``: the disk is full), or what ``verify`` raises;
        no temporary file is left behind.
    """
    folder = final.parent
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    temporary = folder / f".{final.name}.{secrets.token_hex(4)}{TEMPORARY}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as stream:
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
