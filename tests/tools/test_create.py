"""``wlmserver create``: JSON, CSV and dcmdump text into served worklist files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import ORDER
from pydicom import dcmread
from pydicom.dataset import Dataset

from wlmserver.cli import main
from wlmserver.store import orders
from wlmserver.store.wlfile import read_worklist_file
from wlmserver.tools import create

NAME = orders.order_file_name
DUMP2DCM = Path("/usr/bin/dump2dcm")
EXAMPLE_DUMPS = sorted(Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS").glob("*.dump"))


def test_flat_json_is_completed_and_served(tmp_path: Path) -> None:
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([ORDER]), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    (path,) = (tmp_path / "CT01").iterdir()
    assert path.name == NAME("A100")
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Müller^Jürgen"
    assert ds.RequestedProcedureID == "A100" and ds.StudyInstanceUID.startswith("2.25.")
    (step,) = ds.ScheduledProcedureStepSequence
    assert step.ScheduledProcedureStepID == "A100.1"
    assert list(step.ScheduledStationAETitle) == ["CT01", "CT02"]
    assert len(read_worklist_file(path).entries) == 1
    uid = ds.StudyInstanceUID
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0  # the same order
    assert [p.name for p in (tmp_path / "CT01").iterdir()] == [NAME("A100")]
    assert dcmread(path).StudyInstanceUID == uid  # kept stable


def test_dicom_json_model(tmp_path: Path) -> None:
    ds = orders.complete(orders.from_flat(dict(ORDER)))
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
    assert [p.name for p in (tmp_path / "CT01").iterdir()] == [NAME("A100")]  # the good one


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
    assert "3 files checked (3 steps from 3 entries), 0 entries refused" in capsys.readouterr().err
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    assert sorted(p.name for p in (tmp_path / "CT01").iterdir()) == sorted(
        NAME(a) for a in ("A0", "A1", "A2")
    )


def test_a_file_the_server_would_not_read_is_never_left_behind(tmp_path: Path) -> None:
    ds = orders.complete(orders.from_flat(dict(ORDER)))
    ds.ScheduledProcedureStepSequence[0].Modality = ""  # made incomplete after the check
    with pytest.raises(orders.EntryError, match="Modality"):
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


def _csv(path: Path, rows: list[dict[str, object]]) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(keys)]
    for row in rows:
        cells = (row.get(k, "") for k in keys)
        lines.append(",".join("\\".join(c) if isinstance(c, list) else str(c) for c in cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MR_STEP = {
    "ScheduledStationAETitle": "MR01",
    "Modality": "MR",
    "ScheduledProcedureStepStartTime": "1030",
    "ScheduledProcedureStepDescription": "HEAD MR",
}


def test_rows_of_one_order_become_one_file_with_a_step_per_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = _csv(
        Path("orders.csv"),
        [ORDER, {**ORDER, **MR_STEP}, {**ORDER, "AccessionNumber": "A101", "PatientID": "P101"}],
    )
    out = Path("CT01")
    assert main(["create", "--dry-run", "-o", str(out), str(source)]) == 0
    err = capsys.readouterr().err
    assert f"{NAME('A100')}: 2 steps from orders.csv rows 1, 2" in err
    assert "2 files checked (3 steps from 3 entries), 0 entries refused" in err
    assert not out.exists()
    assert main(["create", "-o", str(out), str(source)]) == 0
    assert "2 files written (3 steps from 3 entries), 0 entries refused" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([NAME("A100"), NAME("A101")])
    steps = dcmread(out / NAME("A100")).ScheduledProcedureStepSequence
    assert [s.Modality for s in steps] == ["CT", "MR"]  # in input order, none lost
    assert [s.ScheduledProcedureStepID for s in steps] == ["A100.1", "A100.2"]
    assert len(read_worklist_file(out / NAME("A100")).entries) == 2
    # merging is within one run: writing the order again replaces its file
    _csv(source, [{**ORDER, **MR_STEP}])
    assert main(["create", "-o", str(out), str(source)]) == 0
    (step,) = dcmread(out / NAME("A100")).ScheduledProcedureStepSequence
    assert step.Modality == "MR" and step.ScheduledProcedureStepID == "A100.1"


def test_rows_that_differ_in_the_order_are_refused_naming_attributes_not_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = {**ORDER, **MR_STEP, "PatientName": "MULLER^JURGEN", "PatientID": "P999"}
    source = _csv(Path("orders.csv"), [ORDER, other, {**ORDER, "AccessionNumber": "A7"}])
    out = tmp_path / "CT01"
    assert main(["create", "-o", str(out), str(source)]) == 1
    err = capsys.readouterr().err
    (refusal,) = [line for line in err.splitlines() if line.startswith("REFUSED")]
    assert refusal.startswith("REFUSED orders.csv rows 1, 2: ")
    assert "differ in PatientName, PatientID;" in refusal  # not the UID derived from them
    assert "P999" not in err and "P100" not in err and "MULLER" not in err
    assert "1 files written (1 steps from 1 entries), 2 entries refused" in err
    assert [p.name for p in out.iterdir()] == [NAME("A7")]
    uids = [{**ORDER, "StudyInstanceUID": f"1.2.3.{n}"} for n in (1, 2)]
    assert main(["create", "-o", str(out), str(_csv(source, uids))]) == 1
    assert "but differ in StudyInstanceUID;" in capsys.readouterr().err


def test_an_order_with_a_refused_row_is_refused_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = _csv(Path("orders.csv"), [ORDER, {**ORDER, **MR_STEP, "Modality": ""}])
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 1
    err = capsys.readouterr().err
    assert "REFUSED orders.csv rows 1, 2: one requested procedure, refused whole" in err
    assert "orders.csv row 2: Modality missing" in err
    assert not (tmp_path / "CT01").exists()  # never a file with part of the order


def test_json_entries_and_inputs_of_one_order_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sps_keys = {*MR_STEP, "ScheduledStationAETitle", "ScheduledProcedureStepStartDate"}
    two_steps = {k: v for k, v in ORDER.items() if k not in sps_keys}
    two_steps["ScheduledProcedureStepSequence"] = [
        {k: v for k, v in ORDER.items() if k in sps_keys},
        {**MR_STEP, "ScheduledProcedureStepStartDate": "20261202"},
    ]
    first = Path("a.json")
    first.write_text(json.dumps([two_steps, {**ORDER, "AccessionNumber": "A9"}]), "utf-8")
    dicom_json = orders.complete(orders.from_flat({**ORDER, "Modality": "US"}))
    del dicom_json.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
    second = Path("b.json")  # the DICOM JSON model, in another input
    second.write_text(json.dumps(dicom_json.to_json_dict()), "utf-8")
    out = tmp_path / "WLM"
    assert main(["create", "-o", str(out), str(first), str(second)]) == 0
    assert f"{NAME('A100')}: 3 steps from a.json entry 1 and b.json" in capsys.readouterr().err
    ds = dcmread(out / NAME("A100"))
    assert [s.Modality for s in ds.ScheduledProcedureStepSequence] == ["CT", "MR", "US"]
    assert [s.ScheduledProcedureStepID for s in ds.ScheduledProcedureStepSequence] == [
        "A100.1", "A100.2", "A100.3"
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted([NAME("A100"), NAME("A9")])


def test_dump_files_of_one_order_merge(tmp_path: Path) -> None:
    def dump(ds: Dataset) -> list[str]:
        lines = []
        for e in ds:
            if e.VR == "SQ":
                lines += [f"({e.tag.group:04x},{e.tag.elem:04x}) SQ (Sequence)"]
                for item in e.value:
                    lines += ["(fffe,e000) na (Item)", *dump(item), "(fffe,e00d) na"]
                lines += ["(fffe,e0dd) na"]
            else:
                value = "\\".join(e.value) if e.VM > 1 else str(e.value)
                lines += [f"({e.tag.group:04x},{e.tag.elem:04x}) {e.VR} [{value}]"]
        return lines

    dumps = []
    for modality in ("CT", "MR"):
        ds = orders.from_flat({**ORDER, "Modality": modality})
        dumps.append(tmp_path / f"{modality}.dump")
        dumps[-1].write_text("\n".join(dump(ds)) + "\n", encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "WLM"), *map(str, dumps)]) == 0
    (path,) = (tmp_path / "WLM").iterdir()
    steps = dcmread(path).ScheduledProcedureStepSequence
    assert [(s.Modality, s.ScheduledProcedureStepID) for s in steps] == [
        ("CT", "A100.1"), ("MR", "A100.2")
    ]  # fmt: skip


def test_step_ids_are_unique_and_fit_in_sixteen_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    long_order = {**ORDER, "AccessionNumber": "ACC0123456789012"}  # 16 characters, SH's limit
    source = _csv(Path("orders.csv"), [long_order, {**long_order, **MR_STEP}])
    assert main(["create", "-o", str(tmp_path / "WLM"), str(source)]) == 0
    (path,) = (tmp_path / "WLM").iterdir()
    ids = [s.ScheduledProcedureStepID for s in dcmread(path).ScheduledProcedureStepSequence]
    assert ids == ["ACC01234567890.1", "ACC01234567890.2"]
    # an explicit ID that is the one a step would get: the step gets another
    top = {k: v for k, v in ORDER.items() if k not in {*MR_STEP, "ScheduledProcedureStepStartDate"}}
    steps = [{**{k: ORDER[k] for k in MR_STEP}, "ScheduledProcedureStepStartDate": "20261201"}] * 2
    ds = orders.from_flat({**top, "ScheduledProcedureStepSequence": steps})
    ds.ScheduledProcedureStepSequence[1].ScheduledProcedureStepID = "A100.1"
    ids = [s.ScheduledProcedureStepID for s in orders.complete(ds).ScheduledProcedureStepSequence]
    assert len(set(ids)) == 2 and "A100.1" in ids
    # two steps given the same ID cannot be told apart: refused, without the value
    ds = orders.from_flat({**top, "ScheduledProcedureStepSequence": steps})
    for step in ds.ScheduledProcedureStepSequence:
        step.ScheduledProcedureStepID = "SECRET7"
    with pytest.raises(orders.EntryError, match="SPS items 1 and 2: the same Sch") as info:
        orders.complete(ds)
    assert "SECRET7" not in str(info.value)


@pytest.fixture
def umask_077() -> object:
    """The umask of a private shell (``umask 077``), for the test's duration."""
    import os

    before = os.umask(0o077)
    yield
    os.umask(before)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.mark.usefixtures("umask_077")
def test_a_private_umask_still_writes_files_the_server_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``umask 077; wlmserver create`` wrote 0600 files the server (another user) could not
    read, and said all was well (issue 19): the mode is now explicit."""
    source = tmp_path / "orders.json"
    source.write_text(json.dumps(ORDER), encoding="utf-8")
    plain = tmp_path / "plain"
    assert main(["create", "-o", str(plain / "CT01"), str(source)]) == 0
    (path,) = (plain / "CT01").iterdir()
    assert _mode(path) == 0o644  # readable by the server whatever its group
    assert _mode(plain / "CT01") == _mode(plain) == 0o755  # the folders create made
    # the README's layout: a setgid database root of the server's group
    root = tmp_path / "wlistdb"
    root.mkdir()
    root.chmod(0o2750)
    assert main(["create", "-o", str(root / "WLMSERVER"), str(source)]) == 0
    assert _mode(root / "WLMSERVER") == 0o2750
    (path,) = (root / "WLMSERVER").iterdir()
    assert _mode(path) == 0o640 and path.stat().st_gid == root.stat().st_gid
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.usefixtures("umask_077")
def test_a_folder_only_its_owner_can_list_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "orders.json"
    source.write_text(json.dumps(ORDER), encoding="utf-8")
    (tmp_path / "CT01").mkdir()  # 0700, by the umask
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    err = capsys.readouterr().err
    assert f"WARNING {tmp_path / 'CT01'}: its folder {tmp_path / 'CT01'} can be listed by its " in (
        err
    )
    assert "a server running as another user serves nothing from it" in err


def test_a_misspelled_keyword_refuses_its_entry_only_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One misspelled keyword refused the whole JSON input without naming the entry
    (issue 19): now it refuses that entry, named, with the keyword it probably means."""
    typo = {k if k != "Modality" else "Modalty": v for k, v in ORDER.items()}
    typo["AccessionNumber"] = "A2"
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([ORDER, typo]), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"REFUSED {source} entry 2: Modalty: not a DICOM keyword or tag; did you mean 'Modality'?",
        "1 files written (1 steps from 1 entries), 1 entries refused",
    ]
    assert [p.name for p in (tmp_path / "CT01").iterdir()] == [NAME("A100")]


@pytest.mark.parametrize(
    ("keyword", "value", "words"),
    [
        ("ScheduledProcedureStepStartDate", "2026-12-01", "not a valid DA value: use YYYYMMDD"),
        ("ScheduledProcedureStepStartTime", "9:30", "not a valid TM value: use HHMM or HHMMSS"),
        ("RequestedProcedureDescription", "HEAD " * 14, "70 characters, LO allows at most 64"),
        ("PatientSex", "female", "not a valid CS value: use upper-case letters"),
        ("AccessionNumber", "A" * 17, "17 characters, SH allows at most 16"),
        ("PatientName", "M" * 65, "65 characters, PN allows at most 64 a component group"),
        ("StudyInstanceUID", "1.2.abc", "not a valid UI value: use digits and dots"),
        ("ScheduledStationAETitle", "C" * 17, "17 characters, AE allows at most 16"),
    ],
)
def test_refusals_say_what_to_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keyword: str, value: str, words: str
) -> None:
    source = tmp_path / "order.json"
    source.write_text(json.dumps({**ORDER, keyword: value}), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 1
    err = capsys.readouterr().err
    assert f"{keyword}: not a valid " in err and words in err
    assert value not in err  # the attribute, never the value


def test_no_warning_of_pydicom_reaches_stderr(tmp_path: Path) -> None:
    """pydicom warned on stderr, with the value (patient data) in some of its warnings."""
    import sys

    rows = [dict(ORDER, AccessionNumber="SECRETACCESSION" * 3, PatientSex="SECRET-SEX-TOO-LONG")]
    rows.append(dict(ORDER, AccessionNumber="A2", PatientBirthDate="SECRETDATE"))
    source = tmp_path / "orders.json"
    source.write_text(json.dumps(rows), encoding="utf-8")
    dump = tmp_path / "order.dump"
    dump.write_text("(0008,0050) SH [SECRETACCESSIONNUMBERLONG]\n(0010,0040) CS [secret]\n")
    result = subprocess.run(
        [sys.executable, "-m", "wlmserver", "create", "-o", str(tmp_path / "CT01"), str(source),
         str(dump)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("REFUSED") == 3
    assert "Warning" not in result.stderr and "warn_and_log" not in result.stderr
    assert "SECRET" not in result.stderr.upper()


def test_a_lower_case_station_is_refused_with_what_to_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ct01`` was written and never matched CT01 (AE titles match case-sensitively):
    refused, saying what was probably meant; --keep-station-case writes it as given."""
    source = tmp_path / "order.json"
    source.write_text(json.dumps({**ORDER, "ScheduledStationAETitle": "ct01"}), encoding="utf-8")
    assert main(["create", "-o", str(tmp_path / "CT01"), str(source)]) == 1
    err = capsys.readouterr().err
    assert (
        "ScheduledStationAETitle: 'ct01' has lower-case letters; AE titles are case-sensitive, "
        "so a modality calling as CT01 would never see this step: did you mean CT01?"
    ) in err
    assert not (tmp_path / "CT01").exists()
    assert main(["create", "--keep-station-case", "-o", str(tmp_path / "CT01"), str(source)]) == 0
    (path,) = (tmp_path / "CT01").iterdir()
    assert dcmread(path).ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "ct01"
