"""``wlmserver create``: JSON, CSV and dcmdump text into served worklist files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from wlmserver import create
from wlmserver.cli import main
from wlmserver.wlfile import read_worklist_file

ORDER = {
    "PatientName": "Müller^Jürgen",
    "PatientID": "P100",
    "AccessionNumber": "A100",
    "RequestedProcedureDescription": "CT HEAD",
    "ScheduledStationAETitle": ["CT01", "CT02"],
    "Modality": "CT",
    "ScheduledProcedureStepStartDate": "20261201",
    "ScheduledProcedureStepStartTime": "0930",
    "ScheduledProcedureStepDescription": "HEAD W/O",
}
DUMP2DCM = Path("/usr/bin/dump2dcm")
EXAMPLE_DUMPS = sorted(Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS").glob("*.dump"))


def test_flat_json_is_completed_and_served(tmp_path: Path) -> None:
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([ORDER]), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    (path,) = (tmp_path / "CT01").iterdir()
    assert path.name == "A100_A100.wl"
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Müller^Jürgen"
    assert ds.RequestedProcedureID == "A100" and ds.StudyInstanceUID.startswith("2.25.")
    (step,) = ds.ScheduledProcedureStepSequence
    assert step.ScheduledProcedureStepID == "A100.1"
    assert list(step.ScheduledStationAETitle) == ["CT01", "CT02"]
    assert len(read_worklist_file(path).entries) == 1
    uid = ds.StudyInstanceUID
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0  # the same order
    assert [p.name for p in (tmp_path / "CT01").iterdir()] == ["A100_A100.wl"]
    assert dcmread(path).StudyInstanceUID == uid  # kept stable


def test_dicom_json_model(tmp_path: Path) -> None:
    ds = create.complete(create.from_flat(dict(ORDER)))
    source = tmp_path / "order.json"
    source.write_text(json.dumps(ds.to_json_dict()), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "WLM"), str(source)]) == 0
    (path,) = (tmp_path / "WLM").iterdir()
    assert dcmread(path).PatientID == "P100"


def test_incomplete_and_invalid_entries_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = dict(ORDER, AccessionNumber="A2", ScheduledProcedureStepStartDate="2026-12-01")
    del bad["Modality"]
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([ORDER, bad]), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 1
    err = capsys.readouterr().err
    assert "REFUSED" in err and "entry 2" in err and "Modality missing" in err
    assert "ScheduledProcedureStepStartDate: not a valid DA value" in err
    assert "2026-12-01" not in err  # names the attribute, not the value
    assert [p.name for p in (tmp_path / "CT01").iterdir()] == ["A100_A100.wl"]  # the good one


def test_csv_rows_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = ",".join(k for k in ORDER)
    rows = [
        ",".join(
            "\\".join(v) if isinstance(v, list) else str(v)
            for v in {**ORDER, "AccessionNumber": f"A{n}"}.values()
        )
        for n in range(3)
    ]
    source = tmp_path / "orders.csv"
    source.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    assert main(["create", "--dry-run", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    assert not (tmp_path / "CT01").exists()
    assert "3 entries checked, 0 refused" in capsys.readouterr().err
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    assert sorted(p.name for p in (tmp_path / "CT01").iterdir()) == [
        "A0_A0.wl", "A1_A1.wl", "A2_A2.wl"
    ]  # fmt: skip


def test_text_its_character_set_cannot_hold_is_refused() -> None:
    order = dict(ORDER, SpecificCharacterSet="ISO_IR 100", PatientName="Δημητρίου^Ελένη")
    with pytest.raises(create.EntryError, match="PatientName: has characters ISO_IR 100 cannot"):
        create.complete(create.from_flat(order))
    latin1 = create.complete(create.from_flat(dict(ORDER, SpecificCharacterSet="ISO_IR 100")))
    assert latin1.SpecificCharacterSet == "ISO_IR 100"  # Müller fits: kept as asked


def test_a_file_the_server_would_not_read_is_never_left_behind(tmp_path: Path) -> None:
    ds = create.complete(create.from_flat(dict(ORDER)))
    ds.ScheduledProcedureStepSequence[0].Modality = ""  # made incomplete after the check
    with pytest.raises(create.EntryError, match="Modality"):
        create.write_entry(ds, tmp_path / "WLM")
    assert not any((tmp_path / "WLM").iterdir())


@pytest.mark.skipif(not DUMP2DCM.exists() or not EXAMPLE_DUMPS, reason="DCMTK not installed")
def test_dcmtk_example_dumps_give_what_dump2dcm_gives(tmp_path: Path) -> None:
    assert main(["create", "-o", str(tmp_path / "ours"), *map(str, EXAMPLE_DUMPS)]) == 0
    ours = {read_worklist_file(p).entries[0].top.text(0x00080050): p
            for p in (tmp_path / "ours").iterdir()}  # fmt: skip
    assert len(ours) == len(EXAMPLE_DUMPS)
    for dump in EXAMPLE_DUMPS:
        theirs = tmp_path / f"{dump.stem}.wl"
        subprocess.run([str(DUMP2DCM), "-g", str(dump), str(theirs)], check=True)
        (reference,) = read_worklist_file(theirs).entries
        (entry,) = read_worklist_file(ours[reference.top.text(0x00080050)]).entries
        assert entry.sps == reference.sps, dump.name
        skip = {0x0020000D, 0x00401001}  # filled in only where the dump lacks them
        assert [e for e in entry.top if e[0] not in skip] == [
            e for e in reference.top if e[0] not in skip
        ], dump.name
