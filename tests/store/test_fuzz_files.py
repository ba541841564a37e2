"""Fuzzing the readers of dropped files: generated, truncated, mutated, deeply nested and random
files through the parser, ``Formats().read`` and a store scan beside good files (strategies:
tools/fuzzing.py). Only the documented exceptions, never a hang; the good files stay served."""

from __future__ import annotations

import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_tool

from wlmserver.store.files import WorklistFileError
from wlmserver.store.formats import Formats

pytestmark = pytest.mark.filterwarnings("ignore")

fuzzing = load_tool("fuzzing")


def test_fuzzed_files_parse_or_raise_incomplete_or_undecodable() -> None:
    tally: Counter[str] = Counter()
    fuzzing.run_target("parse", 300, tally)
    assert fuzzing.cases(tally, "parse") == 300
    assert tally["parse: parsed"] and tally["parse: Incomplete"] and tally["parse: Undecodable"]


def test_fuzzed_files_read_or_refused_with_a_reason(tmp_path: Path) -> None:
    tally: Counter[str] = Counter()
    fuzzing.run_target("formats_read", 200, tally, workdir=tmp_path)
    assert fuzzing.cases(tally, "formats_read") == 200


def test_fuzzed_files_beside_good_ones_in_a_scan(tmp_path: Path) -> None:
    tally: Counter[str] = Counter()
    fuzzing.run_target("store_scan", 60, tally, workdir=tmp_path)
    assert fuzzing.cases(tally, "store_scan") == 60


def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """A deflated file was inflated whole before any limit applied: a 64 KiB file cost
    128 MiB (found by the fuzzing)."""
    inflated = 64 * 1024 * 1024
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = fuzzing.element(0x00100010, "PN", b"A")
    raw = compressor.compress(body) + compressor.compress(bytes(inflated)) + compressor.flush()
    path = tmp_path / "bomb.wl"
    path.write_bytes(fuzzing.part10(raw, "1.2.840.10008.1.2.1.99"))
    assert path.stat().st_size < 128 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(WorklistFileError):
            Formats().read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # reading a file may cost a few times its limits (1 MiB values), not 2000 times its size
    assert peak < 16 * 1024 * 1024, (
        f"peak {peak / 2**20:.0f} MiB for a {path.stat().st_size} B file"
    )
