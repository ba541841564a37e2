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
listing of its own. If the child cannot run, the folders are listed here, as always. Without a
usable cache it is stopped (:meth:`ListingsAhead.cancel`): a folder read whole by worker
processes is listed by name only, each file stat'ed by the worker just before it reads it.
"""

from __future__ import annotations

import logging
import marshal
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wlmserver.store.files import Signature

LOGGER = logging.getLogger(__name__)


def signature_of(st: os.stat_result) -> Signature:
    """The signature of a file from its ``stat`` result."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True)
class NameRule:
    """Which file names a folder serves: a suffix in any case (longer than the suffix alone),
    not starting with a hidden prefix (see :meth:`wlmserver.store.formats.Format.names`).

    Examples
    --------
    >>> rule = NameRule((".wl",), (".", "~", "#"))
    >>> [rule.serves(n) for n in ("a.wl", "B.WL", ".a.wl", "a.wl.tmp", "~a.wl", ".wl", "#a.wl")]
    [True, True, False, False, False, False, False]
    """

    suffixes: tuple[str, ...]
    hidden: tuple[str, ...]

    def serves(self, name: str) -> bool:
        """Whether a file name is served (the rule the listing child applies too)."""
        low = name.lower()
        return not name.startswith(self.hidden) and any(
            low.endswith(x) and len(name) > len(x) for x in self.suffixes
        )


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
    links : set of str, optional
        The names that are symbolic links (from the directory entries, without a ``stat``).
    """

    __slots__ = ("_dirents", "links", "names", "signatures")

    def __init__(
        self,
        names: list[str],
        dirents: dict[str, os.DirEntry[str]] | None = None,
        signatures: dict[str, Signature] | None = None,
        links: set[str] | None = None,
    ) -> None:
        self.names = names
        self._dirents = dirents or {}
        self.signatures = signatures
        self.links = links if links is not None else set()

    @classmethod
    def of(cls, folder: Path, serves: Callable[[str], bool]) -> Listing:
        """List a folder now (its files are stat'ed when asked for). Raises OSError when the
        folder cannot be listed."""
        with os.scandir(folder) as it:
            dirents = {d.name: d for d in it if serves(d.name)}
        links = {name for name, d in dirents.items() if d.is_symlink()}
        return cls(sorted(dirents), dirents, links=links)

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


# The child: the interpreter alone (-I -S), so it starts in milliseconds. Its first argument
# is the name rule (:attr:`NameRule`) as marshalled hex; then the folders. It writes, per
# folder, None (cannot be listed) or (name -> signature, names that cannot be stat'ed, names
# that are symbolic links), for the names the rule serves: what the parent gets back needs no
# Python work to use.
_CHILD = """\
import marshal, os, sys
suffixes, hidden = marshal.loads(bytes.fromhex(sys.argv[1]))
out = {}
for folder in sys.argv[2:]:
    try:
        found, failed, links = {}, [], []
        with os.scandir(folder) as it:
            for d in it:
                n = d.name
                low = n.lower()
                if n.startswith(hidden) or not any(
                    low.endswith(x) and len(n) > len(x) for x in suffixes
                ):
                    continue
                if d.is_symlink():
                    links.append(n)
                try:
                    st = d.stat()
                except OSError:
                    failed.append(n)
                    continue
                found[n] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        out[folder] = (found, failed, links)
    except OSError:
        out[folder] = None
sys.stdout.buffer.write(marshal.dumps(out))
"""
_CHILD_FAILURES = (OSError, ValueError, EOFError, TypeError, KeyError, subprocess.SubprocessError)
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
    rule : NameRule
        Which file names are served.
    """

    def __init__(
        self,
        root: Path,
        names: Iterable[str],
        rule: NameRule,
    ) -> None:
        self._root = root
        self._names = list(names)
        self._rule = rule
        self._listings: dict[str, Listing] = {}
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="wlmserver-lister", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        folders = [str(self._root / name) for name in self._names]
        if not folders:
            return
        rule = marshal.dumps((tuple(self._rule.suffixes), tuple(self._rule.hidden))).hex()
        try:
            with self._lock:
                if self._cancelled:
                    return
                self._process = process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _CHILD, rule, *folders],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            try:
                out, _ = process.communicate(timeout=_CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                raise
            if process.returncode != 0:
                raise subprocess.CalledProcessError(process.returncode, "the listing child")
            found = marshal.loads(out)
            for name, folder in zip(self._names, folders, strict=True):
                listed = found[folder]
                if listed is None:
                    continue  # the scan lists it itself, and says why it cannot
                signatures, failed, links = listed
                if not (
                    isinstance(signatures, dict)
                    and isinstance(failed, list)
                    and isinstance(links, list)
                ):
                    raise TypeError("not a listing")
                names = [*signatures, *failed]
                names.sort()
                self._listings[name] = Listing(names, signatures=signatures, links=set(links))
        except (
            OSError,
            ValueError,
            EOFError,
            TypeError,
            KeyError,
            subprocess.SubprocessError,
        ) as exc:
            self._listings.clear()
            if not self._cancelled:
                LOGGER.debug("listing ahead in a child process failed (%s): listed here", exc)

    def take(self, name: str) -> Listing | None:
        """The listing of an AE folder made ahead (once), or None; waits for the child."""
        self._thread.join()
        return self._listings.pop(name, None)

    def cancel(self) -> None:
        """Stop the child (its listings are not needed: every folder is read whole, and then
        each file is stat'ed just before it is read); :meth:`take` gives None from now on."""
        with self._lock:
            self._cancelled = True
            if self._process is not None and self._process.poll() is None:
                self._process.kill()
        self._thread.join()
        self._listings.clear()
