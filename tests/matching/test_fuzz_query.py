"""Fuzzing the query compiler: generated identifiers (every VR, wrong VRs, huge and deep values,
bad character sets, garbage and mutated encodings), decoded as pynetdicom does, compiled,
matched and answered; only QueryError may come out (strategies: tools/fuzzing.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import load_tool

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom's warnings about fuzzed values

fuzzing = load_tool("fuzzing")


def test_fuzzed_identifiers_compile_or_fail_with_a_query_error() -> None:
    tally: Counter[str] = Counter()
    fuzzing.run_target("compile_query", 200, tally)
    assert fuzzing.cases(tally, "compile_query") == 200
    # the strategies reach all three outcomes, not just one
    assert tally["compile_query: compiled"] and tally["compile_query: QueryError"]
