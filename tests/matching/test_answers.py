"""Answers: exactly the requested keys, one SPS item, and a correct character set on the wire."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode

from wlmserver.matching.answers import CharsetPolicy, build_answer, can_encode, choose_charset
from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import MatchingKeys
from wlmserver.matching.query import compile_query
from wlmserver.store.wlfile import read_worklist_file


def _entries(tmp_path: Path, name: str = "a.wl", **kwargs: object) -> list[Entry]:
    return list(read_worklist_file(write_wl(tmp_path / name, **kwargs)).entries)  # type: ignore[arg-type]


def _wire(answer: Dataset, implicit: bool = False, little: bool = True) -> Dataset:
    """Encode as pynetdicom sends it, and decode as a peer would."""
    data = encode(answer, implicit, little)
    assert data is not None
    return read_dataset(BytesIO(data), implicit, little)


def test_exactly_the_requested_keys(tmp_path: Path) -> None:
    (entry,) = _entries(tmp_path)
    query = Dataset()
    query.PatientName = ""
    query.PatientID = ""
    query.PatientWeight = None  # not in the entry: returned zero-length
    query.ReferencedStudySequence = []  # not in the entry: returned empty
    item = Dataset()
    item.Modality = ""
    item.ScheduledStationAETitle = ""
    item.PreMedication = ""  # not in the entry
    query.ScheduledProcedureStepSequence = [item]
    answer = build_answer(compile_query(query), entry)
    assert [e.keyword for e in answer] == [  # in tag order
        "ReferencedStudySequence",
        "PatientName",
        "PatientID",
        "PatientWeight",
        "ScheduledProcedureStepSequence",
    ]
    assert answer.PatientName == "DOE^JANE" and answer.PatientID == "PID001"
    assert answer["PatientWeight"].VR == "DS" and answer.PatientWeight is None
    assert len(answer.ReferencedStudySequence) == 0
    (sps,) = answer.ScheduledProcedureStepSequence
    assert [e.keyword for e in sps] == ["Modality", "ScheduledStationAETitle", "PreMedication"]
    assert sps.Modality == "CT" and sps.PreMedication in ("", None)
    assert "SpecificCharacterSet" not in answer


def test_each_answer_holds_only_its_own_sps_item(tmp_path: Path) -> None:
    entries = _entries(tmp_path, sps=[{"Modality": "CT"}, {"Modality": "MR"}])
    query = Dataset()
    query.ScheduledProcedureStepSequence = [Dataset()]
    answers = [build_answer(compile_query(query), e) for e in entries]
    assert [len(a.ScheduledProcedureStepSequence) for a in answers] == [1, 1]
    assert [a.ScheduledProcedureStepSequence[0].Modality for a in answers] == ["CT", "MR"]


def test_empty_sps_item_expands_to_the_standard_keys(tmp_path: Path) -> None:
    (entry,) = _entries(tmp_path)
    query = Dataset()
    query.ScheduledProcedureStepSequence = [Dataset()]
    (sps,) = build_answer(compile_query(query), entry).ScheduledProcedureStepSequence
    assert sps.ScheduledStationAETitle == "CT01"
    assert sps.ScheduledProcedureStepStartDate == "20261122"
    assert sps.ScheduledProcedureStepID == "SPS001"
    assert "ScheduledProtocolCodeSequence" in sps  # requested, empty in the entry
    (bare,) = build_answer(
        compile_query(query, expand_empty_sps=False), entry
    ).ScheduledProcedureStepSequence
    assert len(bare) == 0


def test_sequences_whole_or_restricted_to_the_requested_keys(tmp_path: Path) -> None:
    ds = make_dataset()
    codes = []
    for value in ("A1", "B2"):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
            value,
            "99L",
            f"Exam {value}",
        )
        codes.append(code)
    ds.RequestedProcedureCodeSequence = codes
    (entry,) = read_worklist_file(write_wl(tmp_path / "c.wl", ds)).entries

    whole = Dataset()
    whole.RequestedProcedureCodeSequence = [Dataset()]
    items = build_answer(compile_query(whole), entry).RequestedProcedureCodeSequence
    assert [(i.CodeValue, i.CodeMeaning) for i in items] == [("A1", "Exam A1"), ("B2", "Exam B2")]

    restricted = Dataset()
    wanted = Dataset()
    wanted.CodeValue = "B2"
    wanted.CodeMeaning = ""
    restricted.RequestedProcedureCodeSequence = [wanted]
    # a return key only by default (K.2.2.1.1.2): every item, with the requested keys
    items = build_answer(compile_query(restricted), entry).RequestedProcedureCodeSequence
    assert [[e.keyword for e in i] for i in items] == [["CodeValue", "CodeMeaning"]] * 2
    assert [i.CodeMeaning for i in items] == ["Exam A1", "Exam B2"]
    # matched (a profile's match-keys): only the items that match (C.2.2.2.6)
    matching = MatchingKeys(frozenset({0x00321064}))
    items = build_answer(
        compile_query(restricted, matching=matching), entry
    ).RequestedProcedureCodeSequence
    assert [[e.keyword for e in i] for i in items] == [["CodeValue", "CodeMeaning"]]
    assert items[0].CodeMeaning == "Exam B2"


CHARSETS = [
    # file charset, name, policy, expected answer charset
    ("ISO_IR 100", "Müller^Jürgen", CharsetPolicy.FILE, "ISO_IR 100"),
    ("ISO_IR 192", "Müller^Jürgen", CharsetPolicy.FILE, "ISO_IR 192"),
    ("ISO_IR 192", "Müller^Jürgen", CharsetPolicy.LATIN1, "ISO_IR 100"),
    ("ISO_IR 192", "Δημητρίου^Ελένη", CharsetPolicy.LATIN1, "ISO_IR 192"),
    ("ISO_IR 126", "Δημητρίου^Ελένη", CharsetPolicy.FILE, "ISO_IR 126"),
    ("ISO_IR 144", "Иванов^Иван", CharsetPolicy.FILE, "ISO_IR 144"),
    ("ISO_IR 192", "山田^太郎", CharsetPolicy.FILE, "ISO_IR 192"),
    ("ISO_IR 100", "Smith^John", CharsetPolicy.FILE, None),  # ASCII: no charset at all
]


@pytest.mark.parametrize(("file_charset", "name", "policy", "expected"), CHARSETS)
@pytest.mark.parametrize(("implicit", "little"), [(False, True), (True, True), (False, False)])
def test_charset_on_the_wire(
    tmp_path: Path,
    file_charset: str,
    name: str,
    policy: CharsetPolicy,
    expected: str | None,
    implicit: bool,
    little: bool,
) -> None:
    (entry,) = _entries(
        tmp_path,
        SpecificCharacterSet=file_charset,
        PatientName=name,
        sps=[{"ScheduledPerformingPhysicianName": name}],
    )
    query = Dataset()
    query.PatientName = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    answer = build_answer(compile_query(query), entry, policy)
    received = _wire(answer, implicit, little)
    assert received.get("SpecificCharacterSet") == expected
    assert str(received.PatientName) == name
    assert str(received.ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName) == name


def test_choose_charset_never_loses_a_character() -> None:
    assert choose_charset(["Müller", "Δ"], ("ISO_IR 100",), CharsetPolicy.FILE) == ("ISO_IR 192",)
    assert choose_charset(["abc"], (), CharsetPolicy.LATIN1) == ()
    assert choose_charset(["é"], (), CharsetPolicy.FILE) == ("ISO_IR 192",)
    assert can_encode(["山田"], ("", "ISO 2022 IR 87")) is True
    assert can_encode(["Δ"], ("ISO_IR 999",)) is False
