"""A half-written file is never served: every cut inside an element is detected."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from wlmserver.completeness import Incomplete, check_complete
from wlmserver.wlfile import WorklistFileError, read_worklist_file


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_only_cuts_at_trailing_element_boundaries_survive(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset(sps=[{"Modality": "CT"}, {"Modality": "MR"}])
    path = write_wl(tmp_path / "full.wl", ds)
    if syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    trailing = sum(1 for elem in ds if elem.tag > 0x00400100)  # elements after the SPS
    cut_path = tmp_path / "cut.wl"
    served = []
    for size in range(1, len(data)):
        cut_path.write_bytes(data[:size])
        try:
            read_worklist_file(cut_path)
        except WorklistFileError:
            continue
        served.append(size)
    # a prefix can only pass as complete when it ends exactly after one of the trailing
    # top-level elements; the close-write/rename rule of the watcher covers those
    assert len(served) <= trailing
    assert len(read_worklist_file(path).entries) == 2


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"\x10\x00\x20\x00LO\x06\x00AB", "value of (0010,0020)"),
        (b"\x10\x00\x20\x00LO", "(0010,0020)"),
        (b"\x10\x00", "tag"),
        # a sequence of undefined length with an item never closed
        (b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff", "item"),
        # a sequence of undefined length never closed
        (b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff", "tag"),
    ],
)
def test_incomplete_streams(data: bytes, where: str) -> None:
    with pytest.raises(Incomplete, match=where.replace("(", r"\(").replace(")", r"\)")):
        check_complete(data, implicit=False, little=True)


def test_complete_stream_with_closed_sequence() -> None:
    closed = (
        b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff"
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        b"\x08\x00\x60\x00CS\x02\x00CT"
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    check_complete(closed, implicit=False, little=True)
