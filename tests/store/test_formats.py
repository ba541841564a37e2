"""The registry of drop formats: the store serves whatever Formats it is given."""

from __future__ import annotations

from pathlib import Path

from conftest import write_wl

from wlmserver.store.files import FileResult, WorklistFileError
from wlmserver.store.formats import JSON_DROP, WORKLIST, Format, Formats
from wlmserver.store.index import WorklistStore
from wlmserver.store.wlfile import parse_worklist


def test_default_and_chosen_formats() -> None:
    assert Formats().served == (WORKLIST,)
    assert Formats.chosen(json_drops=True).served == (WORKLIST, JSON_DROP)
    formats = Formats.chosen(json_drops=True)
    assert formats.format_of("A.WL") is WORKLIST
    assert formats.format_of("order.json") is JSON_DROP
    assert not Formats().serves("order.json")
    assert not formats.serves(".hidden.wl") and not formats.serves("x.wl.tmp")


def test_holds_served_files(tmp_path: Path) -> None:
    write_wl(tmp_path / "WLM" / "a.wl")
    assert Formats().holds_served_files(tmp_path / "WLM")
    assert not Formats().holds_served_files(tmp_path)
    assert not Formats().holds_served_files(tmp_path / "missing")


def _wrapped(data: bytes, path: Path, *, reject_incomplete: bool = True) -> FileResult:
    """A made-up format: a .wl file behind an 8-byte banner."""
    if not data.startswith(b"WRAPPED\n"):
        raise WorklistFileError("no WRAPPED banner")
    return parse_worklist(data[8:], path, reject_incomplete=reject_incomplete)


def test_a_new_format_is_one_format_object(db: Path) -> None:
    """The index, and with it the watcher, serves a format it has never heard of."""
    inner = write_wl(db / "tmp" / "inner.wl", PatientID="WRAPPED").read_bytes()
    (db / "WLM" / "a.wrapped").write_bytes(b"WRAPPED\n" + inner)
    (db / "WLM" / "bad.wrapped").write_bytes(inner)
    write_wl(db / "WLM" / "plain.wl", PatientID="PLAIN")
    wrapped = Format("wrapped file", ".wrapped", _wrapped, default=False)
    store = WorklistStore(db, formats=Formats((WORKLIST, wrapped)))
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None
    assert sorted(e.top.PatientID for e in folder.entries) == ["PLAIN", "WRAPPED"]
    assert folder.files["bad.wrapped"].problem == "no WRAPPED banner"
