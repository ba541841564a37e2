"""The index cache's default folder: the usual cache folder, one per database root, never
inside the database; and the options that choose it (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wlmserver.config.cachedir import cache_base, default_index_cache, folder_for
from wlmserver.config.loader import load
from wlmserver.config.options import UsageError

BASES = [
    # environment, expected cache base
    ({"CACHE_DIRECTORY": "/var/cache/wlmserver", "XDG_CACHE_HOME": "/x"}, "/var/cache/wlmserver"),
    ({"CACHE_DIRECTORY": "/var/cache/a:/var/cache/b"}, "/var/cache/a"),
    ({"XDG_CACHE_HOME": "/home/ris/.xdg"}, "/home/ris/.xdg/wlmserver"),
    ({"XDG_CACHE_HOME": "relative/is/ignored", "HOME": "/home/ris"}, "/home/ris/.cache/wlmserver"),
    ({"CACHE_DIRECTORY": "relative", "HOME": "/home/ris"}, "/home/ris/.cache/wlmserver"),
    ({"HOME": "/home/ris"}, "/home/ris/.cache/wlmserver"),
    ({"HOME": "/"}, None),
    ({}, None),
]


@pytest.mark.parametrize(("environ", "expected"), BASES)
def test_the_cache_base_is_chosen_the_usual_way(
    environ: dict[str, str], expected: str | None
) -> None:
    base = cache_base(environ)
    assert (None if base is None else str(base)) == expected


def test_one_cache_folder_per_database_root(tmp_path: Path) -> None:
    base = tmp_path / "cache"
    (tmp_path / "a" / "wlistdb").mkdir(parents=True)
    (tmp_path / "b" / "wlistdb").mkdir(parents=True)
    first = folder_for(tmp_path / "a" / "wlistdb", base)
    second = folder_for(tmp_path / "b" / "wlistdb", base)
    assert first != second and first.parent == second.parent == base
    assert first.name.startswith("wlistdb-") and second.name.startswith("wlistdb-")
    (tmp_path / "link").symlink_to(tmp_path / "a" / "wlistdb")
    assert folder_for(tmp_path / "link", base) == first  # the same root by another path


def test_never_inside_the_database(tmp_path: Path) -> None:
    root = tmp_path / "db"
    root.mkdir()
    assert default_index_cache(root, {"XDG_CACHE_HOME": str(root / ".cache")}) is None
    assert default_index_cache(root, {"XDG_CACHE_HOME": str(tmp_path / "c")}) is not None


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "db"
    (root / "WLM").mkdir(parents=True)
    return root


def test_the_command_line_keeps_a_cache_by_default(tmp_path: Path, own_cache_folder: Path) -> None:
    root = _root(tmp_path)
    config = load(["-dfp", str(root)]).config
    assert config.index_cache is not None
    assert config.index_cache.parent == own_cache_folder  # XDG_CACHE_HOME/wlmserver/<root>-...
    assert load(["-dfp", str(root), "--no-index-cache"]).config.index_cache is None
    given = tmp_path / "mine"
    assert load(["-dfp", str(root), "--index-cache", str(given)]).config.index_cache == given


def test_no_index_cache_wins_over_the_configuration_file(tmp_path: Path) -> None:
    root = _root(tmp_path)
    file = tmp_path / "wlmserver.toml"
    file.write_text(f'[server]\ndata-files-path = "{root}"\nindex-cache = "{tmp_path / "c"}"\n')
    assert load(["--config", str(file)]).config.index_cache == tmp_path / "c"
    assert load(["--config", str(file), "--no-index-cache"]).config.index_cache is None


def test_an_index_cache_inside_the_database_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    with pytest.raises(UsageError, match="inside the database root"):
        load(["-dfp", str(root), "--index-cache", str(root / "cache")])
