"""The example database generator, and the bundled database it made."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydicom import dcmread

from wlmserver.index import WorklistStore

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_wlistdb", ROOT / "tools" / "make_wlistdb.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_wlistdb"] = module
    spec.loader.exec_module(module)
    return module


SOURCE = ROOT / "wlistdb" / "entries.json"


def test_generated_files_hold_the_source_values(tmp_path: Path) -> None:
    assert _tool().main(["--source", str(SOURCE), "--out", str(tmp_path)]) == 0
    latin1 = dcmread(tmp_path / "WLMSERVER" / "0003-us-latin1.wl")
    assert latin1.SpecificCharacterSet == "ISO_IR 100"
    assert str(latin1.PatientName) == "Müller^Jürgen"
    assert "Müller".encode("latin-1") in (tmp_path / "WLMSERVER" / "0003-us-latin1.wl").read_bytes()
    utf8 = dcmread(tmp_path / "WLMSERVER" / "0004-dx-utf8.wl")
    assert (utf8.SpecificCharacterSet, str(utf8.PatientName)) == ("ISO_IR 192", "Δημητρίου^Ελένη")
    two = dcmread(tmp_path / "WLMSERVER" / "0002-ct-then-mr.wl")
    assert [i.Modality for i in two.ScheduledProcedureStepSequence] == ["CT", "MR"]
    multi = dcmread(tmp_path / "WLMSERVER" / "0001-ct-head.wl")
    assert list(multi.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == ["CT01", "CT02"]
    assert (tmp_path / "CT01" / "lockfile").is_file()


def test_output_is_byte_identical_and_check_passes_on_the_committed_database(
    tmp_path: Path,
) -> None:
    tool = _tool()
    tool.main(["--source", str(SOURCE), "--out", str(tmp_path / "a")])
    tool.main(["--source", str(SOURCE), "--out", str(tmp_path / "b")])
    for path in (tmp_path / "a").rglob("*.wl"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert tool.main(["--check"]) == 0  # the committed wlistdb/ matches entries.json


def test_check_names_a_modified_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "db"
    shutil.copytree(ROOT / "wlistdb", copy)
    target = copy / "CT01" / "0101-ct-chest.wl"
    target.write_bytes(target.read_bytes() + b"\x00")
    assert _tool().main(["--source", str(SOURCE), "--out", str(copy), "--check"]) == 1
    assert "0101-ct-chest.wl" in capsys.readouterr().out


def test_unknown_keyword_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bad.json"
    source.write_text(json.dumps({"X": [{"file": "a.wl", "PatientNme": "A"}]}))
    with pytest.raises(ValueError, match="PatientNme"):
        _tool().main(["--source", str(source), "--out", str(tmp_path)])


def test_every_bundled_entry_is_served() -> None:
    store = WorklistStore(ROOT / "wlistdb")
    store.scan()
    source = json.loads(SOURCE.read_text(encoding="utf-8"))
    for aet, entries in source.items():
        folder = store.folder(aet)
        assert folder is not None and folder.rejected == 0
        steps = sum(len(e["ScheduledProcedureStepSequence"]) for e in entries)
        assert len(folder.entries) == steps
