"""tools/nagle.py: findscu's one-answer latency with Nagle on and off, as it reports it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_tool

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/findscu").exists(), reason="DCMTK findscu not installed"
)


def test_it_times_both_client_settings_and_reports_a_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nagle = load_tool("nagle")
    assert nagle.main(["--runs", "2", "--no-wlmscpfs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("one-answer findscu query (AE ")
    (row,) = [line for line in out if line.startswith("| wlmserver |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and float(cells[3]) > 0


def test_the_query_has_exactly_one_answer(tmp_path: Path) -> None:
    from conftest import write_wl

    nagle = load_tool("nagle")
    write_wl(tmp_path / "A" / "a.wl", PatientID="TWO", sps=[{}, {}])
    write_wl(tmp_path / "B" / "b.wl", PatientID="ONE")
    assert nagle.one_answer_query(tmp_path) == ("B", "ONE")
