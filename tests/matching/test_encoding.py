"""The direct answer encoder writes exactly what pydicom writes (pydicom is the oracle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as pydicom_encode

from wlmserver.matching.answers import as_dataset, build_encoded
from wlmserver.matching.encoding import EncodedAnswer
from wlmserver.matching.query import compile_query
from wlmserver.store.wlfile import read_worklist_file

SYNTAXES = [(False, True), (True, True), (False, False)]


def _entry_dataset(charset: str | list[str] | None, name: str) -> Dataset:
    ds = make_dataset(
        SpecificCharacterSet=charset,
        PatientName=name,
        PatientWeight="72.5",
        sps=[
            {"ScheduledStationAETitle": ["CT01", "CT02"], "ScheduledPerformingPhysicianName": name}
        ],
    )
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99L", "Exam X"
    ds.RequestedProcedureCodeSequence = [code]
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [code]
    ds.ReferencedStudySequence = []
    ds.add_new(0x00280010, "US", 512)
    ds.add_new(0x00181310, "US", [0, 256, 256, 0])
    ds.add_new(0x00189004, "CS", "RESEARCH")
    ds.add_new(0x00200032, "DS", ["-1.5", "2", "3.25"])
    ds.add_new(0x00189219, "FD", 2.5)
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00400100])
    ds.add_new(0x00420011, "OB", b"\x01\x02\x03")
    return ds


def _queries() -> list[Dataset]:
    everything = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientWeight",
        "StudyInstanceUID",
        "AccessionNumber",
    ):
        setattr(everything, keyword, "")
    everything.RequestedProcedureCodeSequence = [Dataset()]
    everything.ReferencedPatientSequence = []
    everything.add_new(0x00280010, "US", None)
    everything.add_new(0x00181310, "US", None)
    everything.add_new(0x00200032, "DS", None)
    everything.add_new(0x00189219, "FD", None)
    everything.add_new(0x00209165, "AT", None)
    everything.add_new(0x00420011, "OB", None)
    everything.ScheduledProcedureStepSequence = [Dataset()]
    restricted = Dataset()
    restricted.PatientName = ""
    wanted = Dataset()
    wanted.CodeMeaning = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledProtocolCodeSequence = [wanted]
    restricted.ScheduledProcedureStepSequence = [item]
    return [everything, restricted]


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (None, "DOE^JANE"),
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Δημητρίου^Ελένη"),
        ("ISO_IR 192", "山田^太郎"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ],
)
@pytest.mark.parametrize(("implicit", "little"), SYNTAXES)
def test_bytes_equal_pydicoms(
    tmp_path: Path, charset: object, name: str, implicit: bool, little: bool
) -> None:
    (entry,) = read_worklist_file(
        write_wl(tmp_path / "a.wl", _entry_dataset(charset, name))
    ).entries  # type: ignore[arg-type]
    for query in _queries():
        answer = build_encoded(compile_query(query), entry)
        expected = pydicom_encode(as_dataset(answer.answer_elements), implicit, little)
        assert answer.encode(implicit, little) == expected


def test_deflated() -> None:
    import zlib

    answer = EncodedAnswer([(0x00100020, "LO", ("ABC",))], ())
    deflated = answer.encode(False, True, deflated=True)
    assert zlib.decompress(deflated, -zlib.MAX_WBITS) == answer.encode(False, True)


def test_cached_elements_keep_transfer_syntax_and_charset_apart() -> None:
    from wlmserver.matching.encoding import encode_elements

    elements = [(0x00100010, "PN", ("Müller^Jürgen",)), (0x00100020, "LO", ("P1",))]
    latin1 = encode_elements(elements, False, True, ("ISO_IR 100",))
    utf8 = encode_elements(elements, False, True, ("ISO_IR 192",))
    assert "Müller".encode("latin-1") in latin1 and "Müller".encode() in utf8
    for _ in range(2):  # the second round comes from the cache: the same bytes
        assert encode_elements(elements, False, True, ("ISO_IR 100",)) == latin1
        assert encode_elements(elements, True, True, ("ISO_IR 100",)) != latin1  # implicit VR
        big = encode_elements(elements, False, False, ("ISO_IR 100",))
        assert big != latin1 and big[:4] == b"\x00\x10\x00\x10"
