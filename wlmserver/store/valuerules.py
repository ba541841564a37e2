"""What a value of each VR must look like (PS3.5 6.2), said so that the operator can type it.

``wlmserver create`` refuses a value that is not valid for its VR, and ``wlmserver check``
warns about one; both say why in the words of one table (:data:`RULES`): a value too long
names the limit, any other the form to use (``use YYYYMMDD``). Messages never hold the value
(patient data), only its length. Validity itself is pydicom's
(:func:`pydicom.valuerep.validate_value`), as the server's readers see it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import config as pydicom_config
from pydicom.valuerep import validate_value


@dataclass(frozen=True)
class Rule:
    """What one VR allows.

    Attributes
    ----------
    max_length : int or None
        Characters per value at most (per component group for PN), or None where the form
        says it (a date, a time, an age).
    form : str
        What to type, with an example.
    """

    max_length: int | None
    form: str


#: The VRs a worklist entry's values are checked against, and what to type for each.
RULES = {
    "AE": Rule(16, "at most 16 characters, no backslash; AE titles are case-sensitive"),
    "AS": Rule(None, "use nnnD, nnnW, nnnM or nnnY (an age: 045Y)"),
    "CS": Rule(16, "use upper-case letters, digits, spaces and underscores (CT, F, ROUTINE)"),
    "DA": Rule(None, "use YYYYMMDD (20261201)"),
    "DS": Rule(16, "use a decimal number (72.5)"),
    "DT": Rule(None, "use YYYYMMDDHHMMSS (20261201093000)"),
    "IS": Rule(12, "use a whole number (42)"),
    "LO": Rule(64, "at most 64 characters, no backslash"),
    "LT": Rule(10240, "at most 10240 characters"),
    "PN": Rule(64, "use FAMILY^GIVEN^MIDDLE (DOE^JANE), at most 64 characters a group"),
    "SH": Rule(16, "at most 16 characters, no backslash"),
    "ST": Rule(1024, "at most 1024 characters"),
    "TM": Rule(None, "use HHMM or HHMMSS, 24-hour (0930, 143000)"),
    "UI": Rule(64, "use digits and dots, no leading zeros (1.2.826.0.1.3680043.10.1)"),
    "UR": Rule(None, "use a URI without spaces"),
}


def _longest(vr: str, text: str) -> int:
    """The length the VR's limit applies to: the value's, or its longest PN group's."""
    if vr == "PN":
        return max(len(group) for group in text.split("="))
    return len(text)


def value_problem(vr: str, value: object) -> str | None:
    """Why ``value`` is not valid for ``vr``, in words that say what to type; None if it is
    (or the VR is not one of :data:`RULES`).

    Examples
    --------
    >>> value_problem("DA", "2026-12-01")
    'not a valid DA value: use YYYYMMDD (20261201)'
    >>> value_problem("LO", "x" * 70)
    'not a valid LO value: 70 characters, LO allows at most 64'
    >>> value_problem("TM", "0930") is None
    True
    """
    rule = RULES.get(vr)
    if rule is None:
        return None
    text = str(value)
    try:
        validate_value(vr, text, pydicom_config.RAISE)
    except (ValueError, TypeError):
        pass
    else:
        return None
    length = _longest(vr, text)
    if rule.max_length is not None and length > rule.max_length:
        per = " a component group" if vr == "PN" else ""
        return (
            f"not a valid {vr} value: {length} characters, {vr} allows at most "
            f"{rule.max_length}{per}"
        )
    return f"not a valid {vr} value: {rule.form}"
