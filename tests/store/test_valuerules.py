"""What a value of each VR must look like: one table, one message per kind of mistake."""

from __future__ import annotations

import pytest

from wlmserver.store.valuerules import RULES, value_problem

#: (VR, a value that is not valid, what the message must say)
CASES = [
    ("DA", "2026-12-01", "use YYYYMMDD"),
    ("DA", "20261301", "use YYYYMMDD"),
    ("TM", "9:30", "use HHMM or HHMMSS"),
    ("DT", "2026-12-01T09:30", "use YYYYMMDDHHMMSS"),
    ("AS", "45 years", "use nnnD, nnnW, nnnM or nnnY"),
    ("LO", "x" * 71, "71 characters, LO allows at most 64"),
    ("SH", "A" * 17, "17 characters, SH allows at most 16"),
    ("AE", "A" * 17, "17 characters, AE allows at most 16"),
    ("CS", "female", "use upper-case letters, digits, spaces and underscores"),
    ("CS", "X" * 17, "17 characters, CS allows at most 16"),
    ("PN", "D" * 65, "65 characters, PN allows at most 64 a component group"),
    ("PN", "A=B=C=D", "use FAMILY^GIVEN^MIDDLE"),
    ("UI", "1.2.abc", "use digits and dots"),
    ("UI", "1." * 40, "UI allows at most 64"),
    ("DS", "seventy", "use a decimal number"),
    ("IS", "4.2", "use a whole number"),
]


@pytest.mark.parametrize(("vr", "value", "words"), CASES)
def test_each_mistake_says_what_to_type(vr: str, value: str, words: str) -> None:
    problem = value_problem(vr, value)
    assert problem is not None and problem.startswith(f"not a valid {vr} value: ")
    assert words in problem
    assert value not in problem  # never the value: patient data


@pytest.mark.parametrize(
    ("vr", "value"),
    [("DA", "20261201"), ("TM", "0930"), ("TM", "093000.5"), ("PN", "DOE^JANE"),
     ("CS", "CT"), ("UI", "1.2.826.0.1"), ("AE", "CT01"), ("AS", "045Y")],
)  # fmt: skip
def test_valid_values_pass(vr: str, value: str) -> None:
    assert value_problem(vr, value) is None


def test_every_vr_create_and_check_validate_has_a_rule() -> None:
    assert {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"} <= set(RULES)
    assert value_problem("OB", b"\x00") is None  # not one of them: not judged here
