"""Where the index cache lives when no ``--index-cache`` is given: the usual cache folder.

A restart of a large database answers in seconds from the index cache instead of indexing every
file again (:mod:`wlmserver.store.cache`), so every server keeps one unless told not to
(``--no-index-cache``). Its folder is chosen the way services and desktop programs choose one:

- ``$CACHE_DIRECTORY``, which systemd sets for a unit with ``CacheDirectory=`` (the first of
  its folders when it names several);
- else ``$XDG_CACHE_HOME/wlmserver`` (the XDG Base Directory Specification), when absolute;
- else ``~/.cache/wlmserver``.

Inside it, one folder per database root (its name and a digest of its real path), so that
servers of two databases, or tests, never share a cache; never a folder inside the database
itself, which the RIS and other readers of the database may see (the cache holds patient data).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path


def cache_base(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder of this process (see the module docstring), or None if none is known.

    Examples
    --------
    >>> cache_base({"CACHE_DIRECTORY": "/var/cache/wlmserver"})
    PosixPath('/var/cache/wlmserver')
    >>> cache_base({"XDG_CACHE_HOME": "/home/ris/.cache"})
    PosixPath('/home/ris/.cache/wlmserver')
    >>> cache_base({"XDG_CACHE_HOME": "relative", "HOME": "/home/ris"})
    PosixPath('/home/ris/.cache/wlmserver')
    """
    env = os.environ if environ is None else environ
    systemd = env.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        return Path(systemd)
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "wlmserver"
    home = env.get("HOME", "")
    if not home or not os.path.isabs(home) or home == "/":
        return None
    return Path(home) / ".cache" / "wlmserver"


def folder_for(root: Path, base: Path) -> Path:
    """The cache folder of database ``root`` under ``base``: the root's name (for people)
    and a digest of its real path (so that two roots never share one).

    Examples
    --------
    >>> folder_for(Path("/srv/wlistdb"), Path("/var/cache/wlmserver")).name.startswith("wlistdb-")
    True
    """
    real = os.path.realpath(root)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(real).name)[:40].lstrip(".") or "root"
    return base / f"{name}-{digest}"


def is_inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is ``root`` or inside it (links followed)."""
    real_folder, real_root = os.path.realpath(folder), os.path.realpath(root)
    return os.path.commonpath([real_folder, real_root]) == real_root


def default_index_cache(root: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The index cache folder of database ``root`` when no ``--index-cache`` is given, or
    None when this process has no cache folder, or it would be inside the database.

    Examples
    --------
    >>> default_index_cache(Path("/srv/db"), {"XDG_CACHE_HOME": "/srv/db/.cache"}) is None
    True
    """
    base = cache_base(environ)
    if base is None:
        return None
    folder = folder_for(root, base)
    return None if is_inside(folder, root) else folder
