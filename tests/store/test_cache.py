"""The index cache: written, reused without reading files again, every file checked first,
and refused (a full index, one log line) whenever it might not be right."""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from conftest import write_wl

import wlmserver
import wlmserver.version
from wlmserver.matching.entry import Entry
from wlmserver.store import cache as cache_module
from wlmserver.store.cache import CACHE_FILE, IndexCache
from wlmserver.store.files import FileResult
from wlmserver.store.formats import Formats
from wlmserver.store.index import LockBusy, WorklistStore


class Spy(Formats):
    """The default formats, recording each file read."""

    reads: list[str]

    def read(self, path: Path, **options: Any) -> FileResult:
        self.reads.append(path.name)
        return super().read(path, **options)


def _store(root: Path, **options: Any) -> tuple[WorklistStore, list[str]]:
    spy = Spy(Formats.chosen(json_drops=options.pop("json_drops", False)).served)
    reads: list[str] = []
    object.__setattr__(spy, "reads", reads)
    return WorklistStore(root, formats=spy, **options), reads


def _answers(store: WorklistStore) -> list[tuple[str, str, int, object, object, object]]:
    """Every entry of every folder, in answer order, as comparable values."""
    return [
        (folder.name, e.path, e.item, list(e.top), list(e.sps), (e.charset, e.order))
        for folder in store.snapshots()
        for e in folder.entries
    ]


@pytest.fixture
def populated(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="PIDA01")
    write_wl(
        db / "WLM" / "b.wl",
        PatientID="PIDB01",
        sps=[{"Modality": "MR"}, {"ScheduledProcedureStepStartTime": "0700"}],
    )
    write_wl(db / "WLM" / "c.wl", PatientID="PIDC01", SpecificCharacterSet="ISO_IR 100",
             PatientName="Müller^Jürgen")  # fmt: skip
    write_wl(db / "WLM" / "bad.wl", PatientID="PIDX01", sps=[{"Modality": None}])
    (db / "WLM" / "junk.wl").write_bytes(b"not DICOM at all")
    write_wl(db / "CT01" / "d.wl", PatientID="PIDD01")
    return db


def _cached_start(root: Path, folder: Path, **options: Any) -> tuple[WorklistStore, list[str]]:
    """A first store indexes and writes the cache; a second one starts from it."""
    first = WorklistStore(root, **options)
    first.scan()
    assert IndexCache(folder, first).save()
    second, reads = _store(root, **options)
    second.scan(IndexCache(folder, second).load())
    return second, reads


def test_the_cache_is_reused_without_reading_any_file(populated: Path, tmp_path: Path) -> None:
    fresh = WorklistStore(populated)
    fresh.scan()
    store, reads = _cached_start(populated, tmp_path / "cache")
    assert reads == []  # not one file parsed again
    assert _answers(store) == _answers(fresh)
    assert _answers(store)  # and there is something to compare
    files = store.folder("WLM")
    assert files is not None and files.files["junk.wl"].problem  # refused files too


def test_the_cache_is_private(populated: Path, tmp_path: Path) -> None:
    store = WorklistStore(populated)
    store.scan()
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert IndexCache(folder, store).save()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / CACHE_FILE).st_mode) == 0o600
    assert os.listdir(folder) == [CACHE_FILE]  # no temporary file left behind


def test_save_writes_only_when_the_index_changed(populated: Path, tmp_path: Path) -> None:
    store = WorklistStore(populated)
    store.scan()
    cache = IndexCache(tmp_path / "cache", store)
    assert cache.save()
    assert not cache.save()
    write_wl(populated / "WLM" / "new.wl", PatientID="PIDN01")
    store.update_file(populated / "WLM" / "new.wl")
    assert cache.save()


def _rewrite_in_place(path: Path, old: bytes, new: bytes, keep_mtime: bool) -> None:
    """Replace bytes inside a file without a new inode, perhaps restoring its mtime."""
    before = os.stat(path)
    data = path.read_bytes()
    assert old in data
    with open(path, "r+b") as handle:
        handle.write(data.replace(old, new))
        handle.truncate()
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _ids(store: WorklistStore, aet: str = "WLM") -> set[str]:
    folder = store.folder(aet)
    assert folder is not None
    return {e.top.PatientID for e in folder.entries}


def test_files_changed_added_or_removed_while_down_are_seen(
    populated: Path, tmp_path: Path
) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    wlm = populated / "WLM"
    # same size, new mtime
    _rewrite_in_place(wlm / "a.wl", b"PIDA01", b"PIDA02", keep_mtime=False)
    os.utime(wlm / "a.wl", ns=(1, 1_000_000_000))
    # same mtime, new size
    before = os.stat(wlm / "b.wl")
    write_wl(wlm / "b.wl", PatientID="PIDB0001")  # written in place: the same inode
    os.utime(wlm / "b.wl", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(wlm / "b.wl").st_size != before.st_size
    # same size, same mtime, same inode: only the change time tells
    _rewrite_in_place(wlm / "c.wl", b"PIDC01", b"PIDC02", keep_mtime=True)
    write_wl(wlm / "e.wl", PatientID="PIDE01")  # added
    (populated / "CT01" / "d.wl").unlink()  # removed
    shutil.rmtree(populated / "CT01")  # and a whole folder
    write_wl(populated / "MR01" / "f.wl", PatientID="PIDF01")  # a new folder

    store, reads = _store(populated)
    store.scan(IndexCache(tmp_path / "cache", store).load())
    assert sorted(reads) == ["a.wl", "b.wl", "c.wl", "e.wl", "f.wl"]
    assert _ids(store) == {"PIDA02", "PIDB0001", "PIDC02", "PIDE01"}
    assert store.folder_names() == ["MR01", "WLM"]
    fresh = WorklistStore(populated)
    fresh.scan()
    assert _answers(store) == _answers(fresh)


def test_a_file_replaced_by_rename_is_read_again(populated: Path, tmp_path: Path) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    target = populated / "WLM" / "a.wl"
    before = os.stat(target)
    write_wl(populated / "WLM" / ".a.tmp", PatientID="PIDA09")
    os.utime(populated / "WLM" / ".a.tmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(populated / "WLM" / ".a.tmp", target)  # same size and mtime, new inode
    store, reads = _store(populated)
    store.scan(IndexCache(tmp_path / "cache", store).load())
    assert reads == ["a.wl"]
    assert "PIDA09" in _ids(store)


def test_an_upgrade_of_wlmserver_keeps_the_cache(
    populated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new wlmserver version (and new code) with the same cache format reads the cache: the
    first start after an upgrade is as fast as a restart (issue 19)."""
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0")
    monkeypatch.setattr(wlmserver.version, "__version__", "99.0")
    monkeypatch.setattr(wlmserver, "__version__", "99.0")
    store, reads = _store(populated)
    cached = IndexCache(tmp_path / "cache", store).load()
    assert cached is not None
    store.scan(cached)
    assert reads == []
    assert _answers(store) == _answers(first)


#: The modules (or their named parts) whose output the cache holds, and the digest of their
#: code (comments and docstrings aside) when CACHE_FORMAT was last reviewed. See
#: test_what_the_cache_holds_cannot_change_without_a_look_at_its_format.
CACHE_MAKERS: dict[str, tuple[str, ...] | None] = {
    "wlmserver.store.dicomfile": None,
    "wlmserver.store.wlfile": None,
    "wlmserver.store.jsondrop": None,
    "wlmserver.store.packing": None,
    "wlmserver.store.files": ("FileState", "Signature"),
    "wlmserver.store.lookup": None,
    "wlmserver.matching.record": None,
    "wlmserver.matching.entry": None,
    "wlmserver.matching.primitives": ("normalise_text",),
    "wlmserver.store.cache": ("_Encoder", "encode", "decode", "_Decoder"),
}
REVIEWED = (4, "045f31af71be05a6e31179b3")


def _code_digest() -> str:
    digest = hashlib.sha256()
    for module, names in CACHE_MAKERS.items():
        source = Path(importlib.import_module(module).__file__ or "").read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):  # docstrings do not change what is made
            body = getattr(node, "body", None)
            if (
                isinstance(body, list)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body[0] = ast.Pass()
        parts = [
            n
            for n in tree.body
            if names is None
            or getattr(n, "name", None) in names
            or any(getattr(t, "id", None) in names for t in getattr(n, "targets", []))
        ]
        digest.update(module.encode())
        digest.update("".join(ast.dump(n) for n in parts).encode())
    return digest.hexdigest()[:24]


def test_what_the_cache_holds_cannot_change_without_a_look_at_its_format() -> None:
    """The cache survives upgrades because it is tied to CACHE_FORMAT, not to wlmserver's
    version: so a change to the code that makes what it holds (parsing, records, entries,
    file states, lookups, the encoding) must be looked at. When this fails: if what those
    modules produce changed (a value parsed otherwise, a field added, another layout), bump
    CACHE_FORMAT in wlmserver/store/cache.py; then set REVIEWED to (CACHE_FORMAT, the digest
    printed)."""
    assert REVIEWED[0] == cache_module.CACHE_FORMAT, "CACHE_FORMAT changed: update REVIEWED"
    assert _code_digest() == REVIEWED[1], (
        f"the code behind the cache changed: bump CACHE_FORMAT if what it makes changed, then "
        f"REVIEWED = ({cache_module.CACHE_FORMAT}, {_code_digest()!r})"
    )


def test_an_unmade_cache_folder_names_the_real_cause(
    populated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache folder whose parent does not exist, in a folder this user cannot write: the
    warning says the folder does not exist and why it cannot be made, not just "Permission
    denied" (issue 19, the deployment guide's foreground trial)."""
    store = WorklistStore(populated)
    store.scan()
    locked = tmp_path / "locked"
    locked.mkdir()
    cache = IndexCache(locked / "var" / "cache" / "wlmserver", store)
    denied = PermissionError(13, "Permission denied")  # as a folder of root's would say
    with (
        caplog.at_level(logging.WARNING, logger="wlmserver.store.cache"),
        mock.patch.object(cache_module.Path, "mkdir", side_effect=denied),
    ):
        assert not cache.save()
    (line,) = _cache_lines(caplog)
    assert f"the folder {locked / 'var'} does not exist and cannot be made" in line
    assert "Permission denied" in line


def test_changes_counts_the_files_the_cache_file_holds_otherwise(
    populated: Path, tmp_path: Path
) -> None:
    store = WorklistStore(populated)
    store.scan()
    cache = IndexCache(tmp_path / "cache", store)
    assert cache.changes() == sum(len(f.files) for f in store.published().values())
    assert cache.save()
    assert cache.changes() == 0
    write_wl(populated / "WLM" / "new.wl", PatientID="PIDN01")
    store.update_file(populated / "WLM" / "new.wl")
    write_wl(populated / "WLM" / "a.wl", PatientID="PIDA02")
    store.update_file(populated / "WLM" / "a.wl")
    (populated / "WLM" / "b.wl").unlink()
    store.update_file(populated / "WLM" / "b.wl")
    assert cache.changes() == 3
    assert cache.save()
    assert cache.changes() == 0


def test_another_pydicom_or_format_means_a_full_index(
    populated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    with monkeypatch.context() as m:
        m.setattr(cache_module.pydicom, "__version__", "9.9.9")
        assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is None
    with monkeypatch.context() as m:
        m.setattr(cache_module, "CACHE_FORMAT", cache_module.CACHE_FORMAT + 1)
        assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is None
    assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is not None


@pytest.mark.parametrize(
    "options",
    [
        {"reject_incomplete": False},
        {"json_drops": True},
        {"max_file_size": 1024},
        {"follow_links": True},
    ],
)
def test_another_option_means_a_full_index(
    populated: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    store, reads = _store(populated, **options)
    with caplog.at_level(logging.INFO, logger="wlmserver.store.cache"):
        cached = IndexCache(tmp_path / "cache", store).load()
    assert cached is None
    assert "not used, made with" in caplog.text
    store.scan(cached)
    assert len(reads) == 6  # every file read


def test_another_database_root_means_a_full_index(populated: Path, tmp_path: Path) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    copy = tmp_path / "copy"
    shutil.copytree(populated, copy)
    assert IndexCache(tmp_path / "cache", WorklistStore(copy)).load() is None


def _damaged(data: bytes) -> list[bytes]:
    middle = len(data) // 2
    flipped = data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :]
    return [
        b"",
        data[:10],
        data[:30],
        data[: len(data) - 200],
        data[:-1],
        flipped,
        b"\x00" * len(data),
        os.urandom(4096),
        data[:26] + b"{not json" + data[35:],
    ]


def test_a_damaged_cache_means_a_full_index_never_a_crash(
    populated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = WorklistStore(populated)
    first.scan()
    cache = IndexCache(tmp_path / "cache", first)
    assert cache.save()
    data = cache.path.read_bytes()
    fresh = _answers(first)
    for damaged in _damaged(data):
        cache.path.write_bytes(damaged)
        caplog.clear()
        store, reads = _store(populated)
        with caplog.at_level(logging.INFO, logger="wlmserver.store.cache"):
            cached = IndexCache(tmp_path / "cache", store).load()
        assert cached is None
        assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
        assert "indexing fully" in caplog.records[0].getMessage()
        store.scan(cached)
        assert len(reads) == 6 and _answers(store) == fresh


def test_a_cache_of_another_user_or_writable_by_others_is_refused(
    populated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = WorklistStore(populated)
    first.scan()
    cache = IndexCache(tmp_path / "cache", first)
    assert cache.save()
    for mode in (0o620, 0o602, 0o666):
        os.chmod(cache.path, mode)
        assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is None
    os.chmod(cache.path, 0o600)
    assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is not None
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(cache.path).st_uid + 1)
    assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is None


def test_a_symbolic_link_as_cache_is_refused(populated: Path, tmp_path: Path) -> None:
    first = WorklistStore(populated)
    first.scan()
    cache = IndexCache(tmp_path / "cache", first)
    assert cache.save()
    os.rename(cache.path, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", cache.path)
    assert IndexCache(tmp_path / "cache", WorklistStore(populated)).load() is None


def test_an_unwritable_cache_folder_is_one_warning(
    populated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = WorklistStore(populated)
    store.scan()
    (tmp_path / "file").write_text("a file, not a folder")
    cache = IndexCache(tmp_path / "file" / "cache", store)
    with caplog.at_level(logging.WARNING, logger="wlmserver.store.cache"):
        assert not cache.save()
        write_wl(populated / "WLM" / "new.wl", PatientID="PIDN01")
        store.update_file(populated / "WLM" / "new.wl")
        assert not cache.save()
    assert len(_cache_lines(caplog)) == 1


def _cache_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wlmserver.store.cache"]


def test_files_a_writer_holds_locked_are_not_served_from_the_cache(
    populated: Path, tmp_path: Path
) -> None:
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    # changed while the server was down; then a wlmscpfs-era writer holds every lockfile
    write_wl(populated / "WLM" / "a.wl", PatientID="PIDA02")
    write_wl(populated / "CT01" / "d.wl", PatientID="PIDD02")
    store = WorklistStore(populated, lock_timeout=0.05)
    store._folder_lock = _busy  # type: ignore[method-assign]
    store.scan(IndexCache(tmp_path / "cache", store).load())
    # a changed file cannot be read: neither its cached state nor anything is served for it
    for aet, fname in (("WLM", "a.wl"), ("CT01", "d.wl")):
        folder = store.folder(aet)
        assert folder is not None and fname not in folder.files
        assert not [e for e in folder.entries if e.path.endswith(fname)]
    # files unchanged since they were read whole are served: their signature says so
    wlm = store.folder("WLM")
    assert wlm is not None
    assert sorted(e.top.PatientID for e in wlm.entries) == ["PIDB01", "PIDB01", "PIDC01"]


def _busy(folder: Path) -> Any:
    raise LockBusy(str(folder))


def test_files_cut_short_are_not_cached(populated: Path, tmp_path: Path) -> None:
    (populated / "WLM" / "empty.wl").write_bytes(b"")
    first = WorklistStore(populated)
    first.scan()
    assert IndexCache(tmp_path / "cache", first).save()
    store, reads = _store(populated)
    store.scan(IndexCache(tmp_path / "cache", store).load())
    assert reads == ["empty.wl"]


def test_reasons_of_files_not_served_are_logged_again(
    populated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = WorklistStore(populated)
    with caplog.at_level(logging.WARNING):
        first.scan()
    logged = sorted(r.getMessage() for r in caplog.records)
    assert IndexCache(tmp_path / "cache", first).save()
    store = WorklistStore(populated)
    cached = IndexCache(tmp_path / "cache", store).load()
    assert cached is not None
    store.scan(cached)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cache_module.log_cached_problems(store, cached) == len(logged)
    assert len(caplog.records) == len(logged)
    for message in logged:  # the same file and reason
        name, _, reason = message.partition(":")
        assert any(name.split()[0] in r.getMessage() for r in caplog.records), message
        assert reason


def _lookup(store: WorklistStore) -> dict[str, object]:
    """Every folder's lookup, entries named by (file, item)."""

    def key(e: Entry) -> tuple[str, int]:
        return (e.path, e.item)

    shown: dict[str, object] = {}
    for folder in store.snapshots():
        lookup = folder.lookup
        shown[folder.name] = (
            [key(e) for e in lookup.entries],
            {
                tag: {k: [key(e) for e in bucket] for k, bucket in table.items()}
                for tag, table in lookup.buckets.items()
            },
            [(name, order, key(e)) for name, order, e in lookup.names],
            lookup.dates,
        )
    return shown


def test_the_cached_lookups_are_the_built_ones(populated: Path, tmp_path: Path) -> None:
    fresh = WorklistStore(populated)
    fresh.scan()
    store, _ = _cached_start(populated, tmp_path / "cache")
    assert _lookup(store) == _lookup(fresh)
    # and updated, not built again, when files changed while down
    write_wl(populated / "WLM" / "e.wl", PatientID="PIDE01", PatientName="ROE^RICHARD")
    (populated / "WLM" / "a.wl").unlink()
    store, reads = _store(populated)
    store.scan(IndexCache(tmp_path / "cache", store).load())
    assert reads == ["e.wl"]
    fresh = WorklistStore(populated)
    fresh.scan()
    assert _lookup(store) == _lookup(fresh)


def test_file_states_packed_for_a_worker_come_back_alike(populated: Path) -> None:
    """What a worker process sends back (:mod:`wlmserver.store.packing`) is what it read."""
    from wlmserver.store.packing import pack_states, unpack_states

    (populated / "WLM" / "empty.wl").write_bytes(b"")
    store = WorklistStore(populated)
    store.scan()
    states = [(f, s) for folder in store.snapshots() for f, s in folder.files.items()]
    back = unpack_states(pack_states(states))
    assert [f for f, _ in back] == [f for f, _ in states]
    for (_, one), (_, other) in zip(states, back, strict=True):
        assert (one.signature, one.problem, one.cut_short) == (
            other.signature,
            other.problem,
            other.cut_short,
        )
        assert [
            (e.path, e.item, list(e.top), list(e.sps), e.charset, e.order) for e in one.entries
        ] == [(e.path, e.item, list(e.top), list(e.sps), e.charset, e.order) for e in other.entries]
        assert all(type(e) is Entry for e in other.entries)
