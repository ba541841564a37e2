"""What an AE folder holds: its file names, and each file's signature.

A file's signature (size, modification time, inode, change time: :data:`Signature`) is what
says it changed, so a scan of a folder is a listing, one ``stat`` per file, and a read of the
files whose signature differs from the index's. A :class:`Listing` is that first part.

At a start from the index cache, the ``stat`` of every file (1.4 s at 100,000 files, nearly all
of it in the kernel) is what remains to do once the cache is read back, and reading it back
(about 2 s) holds the GIL throughout; a thread doing the ``stat`` calls meanwhile waits for the
GIL after each one, and ends more than a second after the cache is read. So
:class:`ListingsAhead` lists and stats in a small child process (the interpreter alone, no
imports: 30 ms to start), on the other core, while the cache is read back. Nothing is read or
decided there: the scan that takes a listing made ahead compares and reads exactly as with a
listing of its own. If the child cannot run, the folders are listed here, as always.
"""

from __future__ import annotations

import logging
import marshal
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

LOGGER = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]
"""What says a file changed: ``(size, mtime_ns, inode, ctime_ns)``, from one ``stat``."""


def signature_of(st: os.stat_result) -> Signature:
    """The signature of a file from its ``stat`` result."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class Listing:
    """The served file names of one folder, sorted, and a way to their signatures.

    Parameters
    ----------
    names : list of str
        The served names, sorted.
    dirents : dict, optional
        Name -> :class:`os.DirEntry` (stat'ed on demand).
    signatures : dict, optional
        Name -> signature, taken ahead; a name without one could not be stat'ed (gone, or a
        broken link).
    """

    __slots__ = ("_dirents", "names", "signatures")

    def __init__(
        self,
        names: list[str],
        dirents: dict[str, os.DirEntry[str]] | None = None,
        signatures: dict[str, Signature] | None = None,
    ) -> None:
        self.names = names
        self._dirents = dirents or {}
        self.signatures = signatures

    @classmethod
    def of(cls, folder: Path, serves: Callable[[str], bool]) -> Listing:
        """List a folder now (its files are stat'ed when asked for). Raises OSError when the
        folder cannot be listed."""
        with os.scandir(folder) as it:
            dirents = {d.name: d for d in it if serves(d.name)}
        return cls(sorted(dirents), dirents)

    def signature(self, name: str) -> Signature | None:
        """A file's signature, or None if it cannot be stat'ed (gone, or a broken link)."""
        if self.signatures is not None:
            return self.signatures.get(name)
        try:
            return signature_of(self._dirents[name].stat())
        except (OSError, KeyError):
            return None

    @staticmethod
    def signature_now(path: Path) -> Signature | None:
        """A file's signature from a ``stat`` now, or None if it cannot be stat'ed."""
        try:
            return signature_of(path.stat())
        except OSError:
            return None


# The child: the interpreter alone (-I -S), so it starts in milliseconds. It writes, per folder
# given, None (cannot be listed) or a list of (name, signature or None).
_CHILD = """\
import marshal, os, sys
out = {}
for folder in sys.argv[1:]:
    try:
        rows = []
        with os.scandir(folder) as it:
            for d in it:
                try:
                    st = d.stat()
                except OSError:
                    rows.append((d.name, None))
                    continue
                rows.append((d.name, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)))
    except OSError:
        rows = None
    out[folder] = rows
sys.stdout.buffer.write(marshal.dumps(out))
"""
#: The child is given at most this long; then the folders are listed here.
_CHILD_TIMEOUT = 120.0


class ListingsAhead:
    """The listings of some AE folders, made in a child process while the caller does
    something else (see the module docstring).

    Parameters
    ----------
    root : Path
        The database root.
    names : iterable of str
        The AE folders to list.
    serves : callable
        Whether a file name is served.
    """

    def __init__(self, root: Path, names: Iterable[str], serves: Callable[[str], bool]) -> None:
        self._root = root
        self._names = list(names)
        self._serves = serves
        self._listings: dict[str, Listing] = {}
        self._thread = threading.Thread(target=self._run, name="wlmserver-lister", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        folders = [str(self._root / name) for name in self._names]
        if not folders:
            return
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _CHILD, *folders],
                capture_output=True,
                timeout=_CHILD_TIMEOUT,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            found = marshal.loads(done.stdout)
        except (OSError, ValueError, EOFError, TypeError, subprocess.SubprocessError) as exc:
            LOGGER.debug("listing ahead in a child process failed (%s): listed here", exc)
            return
        for name, folder in zip(self._names, folders, strict=True):
            rows = found.get(folder) if isinstance(found, dict) else None
            if rows is None:
                continue  # the scan lists it itself, and says why it cannot
            signatures = {n: tuple(s) for n, s in rows if s is not None and self._serves(n)}
            names = sorted(n for n, _ in rows if self._serves(n))
            self._listings[name] = Listing(names, signatures=signatures)

    def take(self, name: str) -> Listing | None:
        """The listing of an AE folder made ahead (once), or None; waits for the child."""
        self._thread.join()
        return self._listings.pop(name, None)
