"""``tools/mpps_restart.py``, the restart measurement the README quotes, on a small folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_tool


def test_it_times_a_first_start_and_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = load_tool("mpps_restart")
    argv = ["--instances", "300", "--work", str(tmp_path), "--mode", "first", "--mode", "clean"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    first, clean = (line for line in out.splitlines() if line.startswith(("first:", "clean:")))
    assert "C-ECHO" in first and "(300 files read" in first
    assert "(0 files read, the others from the index file)" in clean
