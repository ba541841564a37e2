"""The example database generator (tools/make_wlistdb.py), and the bundled database it made."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from wlmserver.store.index import WorklistStore

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "wlistdb" / "entries.json"
ENTRIES: dict[str, list[dict[str, Any]]] = json.loads(SOURCE.read_text(encoding="utf-8"))
ALL = [(aet, entry) for aet, entries in ENTRIES.items() for entry in entries]
CODECS = {"ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _load_tool() -> ModuleType:
    """Import the script from its path: tools/ is not a package."""
    spec = importlib.util.spec_from_file_location(
        "make_wlistdb", ROOT / "tools" / "make_wlistdb.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_wlistdb"] = module
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """The database generated from the bundled source into a temporary folder."""
    out = tmp_path / "db"
    assert tool.main(["--source", str(SOURCE), "--out", str(out)]) == 0
    return out


def _as_json(value: Any) -> Any:
    """A read-back element value in the source's form (strings, lists, lists of objects)."""
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    return "" if value is None else str(value)


def _dataset_as_json(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.VR == "SQ":
            out[elem.keyword] = [_dataset_as_json(item) for item in elem.value]
        else:
            out[elem.keyword] = _as_json(elem.value)
    return out


def _write_source(tmp_path: Path, data: Any) -> Path:
    source = tmp_path / "entries.json"
    source.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return source


def _entry(**attributes: Any) -> dict[str, Any]:
    return {"file": "a.wl", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.999", **attributes}


# --------------------------------------------------------------------------- the source data
def test_the_source_shows_the_documented_features() -> None:
    assert 10 <= len(ALL) <= 14
    steps = [s for _, e in ALL for s in e["ScheduledProcedureStepSequence"]]
    assert any(len(e["ScheduledProcedureStepSequence"]) > 1 for _, e in ALL)
    assert any(isinstance(s["ScheduledStationAETitle"], list) for s in steps)
    assert {"ISO_IR 100", "ISO_IR 192"} <= {e.get("SpecificCharacterSet") for _, e in ALL}
    assert {"CT", "MR", "US", "DX", "CR"} <= {s["Modality"] for s in steps}
    assert {s["ScheduledProcedureStepStartDate"][:6] for s in steps} == {"202611", "202612"}
    assert all(e["StudyInstanceUID"].startswith("1.2.826.0.1.3680043.10.1234.") for _, e in ALL)
    assert len({e["StudyInstanceUID"] for _, e in ALL}) == len(ALL)


@pytest.mark.parametrize(("aet", "entry"), ALL, ids=[e["file"] for _, e in ALL])
def test_every_entry_has_the_type_1_return_keys(aet: str, entry: dict[str, Any]) -> None:
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "RequestedProcedureID"):
        assert entry.get(key), key
    assert entry.get("RequestedProcedureDescription") or entry.get("RequestedProcedureCodeSequence")
    for step in entry["ScheduledProcedureStepSequence"]:
        for key in (
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "Modality",
            "ScheduledProcedureStepID",
        ):
            assert step.get(key), key
        assert step.get("ScheduledProcedureStepDescription") or step.get(
            "ScheduledProtocolCodeSequence"
        )


# --------------------------------------------------------------------------- generated files
@pytest.mark.parametrize(("aet", "entry"), ALL, ids=[e["file"] for _, e in ALL])
def test_generated_files_hold_exactly_the_source_values(
    generated: Path, aet: str, entry: dict[str, Any]
) -> None:
    ds = dcmread(generated / aet / entry["file"])
    expected = {k: v for k, v in entry.items() if k != "file"}
    assert _dataset_as_json(ds) == expected


@pytest.mark.parametrize(
    ("aet", "entry"),
    [(a, e) for a, e in ALL if "SpecificCharacterSet" in e],
    ids=[e["file"] for _, e in ALL if "SpecificCharacterSet" in e],
)
def test_non_ascii_names_are_encoded_in_the_entrys_character_set(
    generated: Path, aet: str, entry: dict[str, Any]
) -> None:
    path = generated / aet / entry["file"]
    ds = dcmread(path)
    charset = entry["SpecificCharacterSet"]
    assert ds.SpecificCharacterSet == charset
    assert str(ds.PatientName) == entry["PatientName"]
    assert not entry["PatientName"].isascii()
    raw = path.read_bytes()
    assert entry["PatientName"].encode(CODECS[charset]) in raw
    step = entry["ScheduledProcedureStepSequence"][0]
    performer = step["ScheduledPerformingPhysicianName"]  # text in a sequence item, too
    assert str(ds.ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName) == performer
    assert performer.encode(CODECS[charset]) in raw


def test_named_examples(generated: Path) -> None:
    latin1 = dcmread(generated / "WLMSERVER" / "0003-us-latin1.wl")
    assert (latin1.SpecificCharacterSet, str(latin1.PatientName)) == ("ISO_IR 100", "Müller^Jürgen")
    utf8 = dcmread(generated / "WLMSERVER" / "0004-dx-utf8.wl")
    assert (utf8.SpecificCharacterSet, str(utf8.PatientName)) == ("ISO_IR 192", "Δημητρίου^Ελένη")
    two = dcmread(generated / "WLMSERVER" / "0002-ct-then-mr.wl")
    steps = two.ScheduledProcedureStepSequence
    assert [(s.Modality, s.ScheduledProcedureStepStartDate) for s in steps] == [
        ("CT", "20261123"),
        ("MR", "20261124"),
    ]
    multi = dcmread(generated / "WLMSERVER" / "0001-ct-head.wl")
    station = multi.ScheduledProcedureStepSequence[0].ScheduledStationAETitle
    assert isinstance(station, MultiValue) and list(station) == ["CT01", "CT02"]
    assert multi.ReferencedStudySequence == [] and "ReferencedPatientSequence" in multi


def test_file_meta_as_dump2dcm_writes_it(generated: Path) -> None:
    instance_uids = set()
    for path in sorted(generated.rglob("*.wl")):
        assert path.read_bytes()[128:132] == b"DICM"
        meta = dcmread(path).file_meta
        assert meta.MediaStorageSOPClassUID == "1.2.276.0.7230010.3.1.0.1"
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
        assert meta.MediaStorageSOPInstanceUID.is_valid
        instance_uids.add(meta.MediaStorageSOPInstanceUID)
    assert len(instance_uids) == len(ALL)


def test_lockfiles_modes_and_no_temporary_files(generated: Path) -> None:
    assert sorted(p.name for p in generated.iterdir()) == sorted(ENTRIES)
    for aet in ENTRIES:
        lock = generated / aet / "lockfile"
        assert lock.is_file() and lock.stat().st_size == 0
    umask = os.umask(0)
    os.umask(umask)
    for path in generated.rglob("*.wl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert not [p for p in generated.rglob("*") if p.name.startswith(".")]


def test_output_is_byte_identical_and_a_second_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert tool.main(["--source", str(SOURCE), "--out", str(a)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("wrote ") for line in lines) == len(ALL) + len(ENTRIES)
    assert tool.main(["--source", str(SOURCE), "--out", str(b)]) == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for relative in files:
        assert (a / relative).read_bytes() == (b / relative).read_bytes()
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*.wl")}
    assert tool.main(["--source", str(SOURCE), "--out", str(a)]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if "wrote" in line]
    assert before == {p: p.stat().st_mtime_ns for p in a.rglob("*.wl")}


def test_stale_wl_files_are_removed_and_other_files_kept(
    generated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = generated / "CT01"
    (folder / "9999-old.wl").write_bytes(b"old")
    (folder / "notes.txt").write_text("kept")
    (folder / ".drop.wl.tmp").write_bytes(b"kept")
    other = generated / "OTHER"  # a folder the source does not name is not managed
    other.mkdir()
    (other / "x.wl").write_bytes(b"kept")
    assert tool.main(["--source", str(SOURCE), "--out", str(generated)]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (folder / "9999-old.wl").exists()
    assert (folder / "notes.txt").exists() and (folder / ".drop.wl.tmp").exists()
    assert (other / "x.wl").exists()


# --------------------------------------------------------------------------- --check
def test_check_passes_on_the_committed_database(capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["--check"]) == 0, capsys.readouterr().out


def test_check_names_a_modified_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "db"
    shutil.copytree(ROOT / "wlistdb", copy)
    target = copy / "CT01" / "0101-ct-chest.wl"
    changed = target.read_bytes().replace(b"FISCHER^HANNAH", b"FISCHER^HANNES")
    target.write_bytes(changed)
    assert tool.main(["--source", str(SOURCE), "--out", str(copy), "--check"]) == 1
    out = capsys.readouterr().out
    assert "0101-ct-chest.wl" in out and len(out.splitlines()) == 1
    assert target.read_bytes() == changed


def test_check_names_missing_extra_and_lockfile_problems(
    generated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (generated / "US01" / "0201-us-thyroid.wl").unlink()
    (generated / "US01" / "extra.wl").write_bytes(b"x")
    (generated / "CT01" / "lockfile").unlink()
    assert tool.main(["--source", str(SOURCE), "--out", str(generated), "--check"]) == 1
    out = capsys.readouterr().out
    for name in ("0201-us-thyroid.wl", "extra.wl", "CT01/lockfile"):
        assert name in out
    assert not (generated / "CT01" / "lockfile").exists()


# --------------------------------------------------------------------------- bad source data
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"X": [_entry(PatientNme="A")]}, "PatientNme"),
        ({"X": [_entry(PatientName="Müller")]}, "needs a SpecificCharacterSet"),
        ({"X": [_entry(SpecificCharacterSet="ISO_IR 100", PatientName="Δ")]}, "ISO_IR 100"),
        ({"X": [_entry(PatientName=["A", "B"])]}, "takes one value"),
        ({"X": [_entry(PatientID="A\\B")]}, "JSON list"),
        ({"X": [_entry(Modality="ct")]}, "Modality"),
        ({"X": [_entry(PatientID=7)]}, "string"),
        ({"X": [_entry(ScheduledProcedureStepSequence={"Modality": "CT"})]}, "list of objects"),
        ({"X": [_entry(), _entry()]}, "listed twice"),
        ({"X": [_entry(file="../escape.wl")]}, "plain name"),
        ({"X": [_entry(file="a.dcm")]}, "plain name"),
        ({"../X": [_entry()]}, "AE folder"),
        ({"X": [{"file": "a.wl", "PatientName": "A"}]}, "StudyInstanceUID"),
    ],
)
def test_bad_source_data_is_refused_before_anything_is_written(
    tmp_path: Path, data: Any, message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        tool.main(["--source", str(_write_source(tmp_path, data)), "--out", str(out)])
    assert not out.exists()


# --------------------------------------------------------------------------- served
def test_every_bundled_entry_is_served() -> None:
    store = WorklistStore(ROOT / "wlistdb")
    store.scan()
    for aet, entries in ENTRIES.items():
        folder = store.folder(aet)
        assert folder is not None and folder.rejected == 0
        steps = sum(len(e["ScheduledProcedureStepSequence"]) for e in entries)
        assert len(folder.entries) == steps
