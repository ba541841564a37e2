"""Reading one worklist file: splitting by SPS item, completeness, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.dataset import Dataset

from wlmserver.matching.record import Record
from wlmserver.store.files import WorklistFileError
from wlmserver.store.formats import WORKLIST
from wlmserver.store.wlfile import read_worklist_file


def test_one_entry_per_sps_item(tmp_path: Path) -> None:
    path = write_wl(
        tmp_path / "a.wl",
        sps=[
            {"Modality": "CT", "ScheduledProcedureStepID": "S1"},
            {"Modality": "MR", "ScheduledProcedureStepID": "S2"},
            {"Modality": "US", "ScheduledProcedureStepID": "S3"},
        ],
    )
    result = read_worklist_file(path)
    assert [e.sps.Modality for e in result.entries] == ["CT", "MR", "US"]
    assert [e.item for e in result.entries] == [0, 1, 2]
    assert all(e.top.PatientID == "PID001" for e in result.entries)
    assert all("ScheduledProcedureStepSequence" not in e.top for e in result.entries)
    assert result.problems == ()


def test_entry_order_key(tmp_path: Path) -> None:
    path = write_wl(tmp_path / "b.wl", sps=[{"ScheduledProcedureStepStartTime": "0930"}])
    (entry,) = read_worklist_file(path).entries
    assert entry.order == ("20261122093000000000", "b.wl", 0)


def test_decodes_in_the_files_character_set(tmp_path: Path) -> None:
    path = write_wl(
        tmp_path / "c.wl", SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen"
    )
    assert b"M\xfcller" in path.read_bytes()  # really Latin-1 on disk
    (entry,) = read_worklist_file(path).entries
    assert entry.top.text(0x00100010) == ("Müller^Jürgen",)
    assert entry.charset == ("ISO_IR 100",)


@pytest.mark.parametrize(
    ("missing", "where"),
    [
        ({"PatientID": None}, "top"),
        ({"StudyInstanceUID": None}, "top"),
        ({"RequestedProcedureID": None}, "top"),
        ({"RequestedProcedureDescription": None}, "top"),
        ({"PatientName": ""}, "top"),
        ({"ScheduledStationAETitle": None}, "sps"),
        ({"ScheduledProcedureStepStartDate": None}, "sps"),
        ({"ScheduledProcedureStepStartTime": None}, "sps"),
        ({"Modality": ""}, "sps"),
        ({"ScheduledProcedureStepID": None}, "sps"),
        ({"ScheduledProcedureStepDescription": None}, "sps"),
    ],
)
def test_incomplete_entries_are_rejected_with_the_reason(
    tmp_path: Path, missing: dict[str, None], where: str
) -> None:
    keyword = next(iter(missing))
    ds = make_dataset(**missing) if where == "top" else make_dataset(sps=[missing])
    path = write_wl(tmp_path / "d.wl", ds)
    result = read_worklist_file(path)
    assert result.entries == ()
    assert len(result.problems) == 1 and keyword in result.problems[0]
    served = read_worklist_file(path, reject_incomplete=False)  # -dfr
    assert len(served.entries) == 1 and keyword in served.problems[0]


def test_one_alternative_of_a_1c_pair_is_enough(tmp_path: Path) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99L", "Exam"
    ds = make_dataset(
        RequestedProcedureDescription=None, sps=[{"ScheduledProcedureStepDescription": None}]
    )
    ds.RequestedProcedureCodeSequence = [code]
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [code]
    assert len(read_worklist_file(write_wl(tmp_path / "e.wl", ds)).entries) == 1


def test_only_the_incomplete_item_of_a_file_is_left_out(tmp_path: Path) -> None:
    path = write_wl(
        tmp_path / "f.wl",
        sps=[{"ScheduledProcedureStepID": "OK"}, {"ScheduledProcedureStepID": None}],
    )
    result = read_worklist_file(path)
    assert [e.sps.ScheduledProcedureStepID for e in result.entries] == ["OK"]
    assert result.problems and "SPS item 2" in result.problems[0]


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = write_wl(tmp_path / "good.wl")
    data = good.read_bytes()
    files = {
        "empty": b"",
        "text": b"this is not DICOM at all, just a text file that got the wrong name\n" * 3,
        "truncated": data[: len(data) - 40],
        "half": data[: len(data) // 2],
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name}.wl"
        out[name].write_bytes(content)
    no_sps = make_dataset()
    del no_sps.ScheduledProcedureStepSequence
    out["no-sps"] = write_wl(tmp_path / "nosps.wl", no_sps)
    empty_sps = make_dataset(sps=[])
    out["empty-sps"] = write_wl(tmp_path / "emptysps.wl", empty_sps)
    bad_charset = make_dataset()
    bad_charset.SpecificCharacterSet = "ISO_IR 999"
    out["charset"] = write_wl(tmp_path / "charset.wl", bad_charset)
    return out


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty"),
        ("text", "not a DICOM file"),
        ("truncated", "cut short"),
        ("half", "cut short"),
        ("no-sps", "ScheduledProcedureStepSequence"),
        ("empty-sps", "no item"),
        ("charset", "ISO_IR 999"),
    ],
)
def test_bad_files_raise_with_a_reason(tmp_path: Path, kind: str, reason: str) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(WorklistFileError) as info:
        read_worklist_file(path)
    assert str(info.value)
    assert reason in str(info.value)


def test_undecodable_text_is_rejected(tmp_path: Path) -> None:
    path = write_wl(tmp_path / "g.wl", SpecificCharacterSet="ISO_IR 192", PatientName="ABC^DEF")
    path.write_bytes(path.read_bytes().replace(b"ABC^DEF", b"AB\xff^DEF"))  # invalid UTF-8
    with pytest.raises(WorklistFileError, match="decode"):
        read_worklist_file(path)


def test_files_without_part10_header_are_served(tmp_path: Path) -> None:
    ds = make_dataset()
    path = tmp_path / "raw.wl"
    ds.save_as(path, implicit_vr=True, little_endian=True)  # a bare dataset, no preamble
    assert len(read_worklist_file(path).entries) == 1


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("a.wl", True),
        ("A.WL", True),
        ("x.Wl", True),
        (".hidden.wl", False),
        ("a.wl.tmp", False),
        ("a.wl~", False),
        ("~a.wl", False),
        ("#a.wl#", False),
        (".wl", False),
        ("lockfile", False),
        ("a.dcm", False),
    ],
)
def test_worklist_names(name: str, served: bool) -> None:
    assert WORKLIST.names(name) is served


def _reference_missing(record: Record, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """What missing_type1 answered before it read the record's parts directly."""
    from pydicom.datadict import tag_for_keyword

    return [
        " or ".join(alternatives)
        for alternatives in required
        if not any(record.has_value(tag_for_keyword(k) or 0) for k in alternatives)
    ]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"PatientName": "", "PatientID": "P1"},
        {"PatientName": "A^B", "PatientID": "P1", "StudyInstanceUID": "1.2"},
        {"RequestedProcedureDescription": "", "RequestedProcedureID": "R"},
    ],
)
def test_missing_type1_answers_as_has_value(values: dict[str, str]) -> None:
    from wlmserver.matching.keys import REQUIRED_SPS, REQUIRED_TOP
    from wlmserver.store.wlfile import missing_type1

    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.RequestedProcedureCodeSequence = [Dataset()] if "PatientName" in values else []
    record = Record([(e.tag, e.VR, (str(e.value),) if e.value else ()) for e in ds])
    if "PatientName" in values:  # a sequence with an item counts as having a value
        record = Record(
            [*(e for e in record if e[0] != 0x00321064), (0x00321064, "SQ", (Record([]),))]
        )
    for required in (REQUIRED_TOP, REQUIRED_SPS):
        assert missing_type1(record, required) == _reference_missing(record, required)


@pytest.mark.parametrize("where", ["first", "middle", "last", "twice"])
def test_the_top_record_is_the_file_without_its_sps(where: str) -> None:
    """The top-level record is cut from the file's layout once per layout; it equals the
    record built the general way (sorting what is left), wherever the SPS lies."""
    from wlmserver.matching.keys import SPS_SEQUENCE_TAG
    from wlmserver.store.wlfile import split_entries

    item = Record([(0x00080060, "CS", ("CT",)), (0x00400001, "AE", ("CT01",))])
    others = {
        "first": [(0x00410001, "LO", ("X",))],
        "middle": [(0x00100010, "PN", ("A^B",)), (0x00410001, "LO", ("X",))],
        "last": [(0x00080050, "SH", ("ACC",)), (0x00100020, "LO", ("P1",))],
        "twice": [(0x00100020, "LO", ("P1",)), (SPS_SEQUENCE_TAG, "SQ", (item,))],
    }[where]
    record = Record([*others, (SPS_SEQUENCE_TAG, "SQ", (item,))])
    for _ in range(2):  # the layout's cut is computed, then known
        result = split_entries(record, (), Path("/db/WLM/a.wl"), reject_incomplete=False)
        expected = Record([e for e in record if e[0] != SPS_SEQUENCE_TAG])
        assert all(entry.top == expected for entry in result.entries)
        assert [list(entry.top) for entry in result.entries] == [list(expected)] * len(
            record.items(SPS_SEQUENCE_TAG)
        )
        assert SPS_SEQUENCE_TAG not in result.entries[0].top
