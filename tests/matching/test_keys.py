"""The key table (PS3.4 Table K.6-1): which keys are matched by default, which never are."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword

from wlmserver.matching.keys import (
    DEFAULT_MATCHING,
    MANDATORY_RETURN_TAGS,
    SPS_EXPANSION_TAGS,
    WORKLIST_KEYS,
    Level,
    MatchingKeys,
    WorklistKey,
    never_matched,
)

SPS, SPCS, PCS, PDS = 0x00400100, 0x00400008, 0x00400440, 0x00380100
ALL = MatchingKeys(all_keys=True)
PREGNANCY = MatchingKeys(frozenset({0x001021C0}))


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return tag


# (keyword, where it is, matched by default, by match-keys = ["PregnancyStatus"], by
# match-all-keys): R keys always; the optional keys wlmscpfs matches and three that name one
# order or step by default; every other key a return key only (K.2.2.1.1.2) unless a profile
# says; "-" keys and Table K.6-1a never
MATCHED = [
    ("PatientID", (), True, True, True),
    ("PatientName", (), True, True, True),
    ("ScheduledStationAETitle", (SPS,), True, True, True),
    ("ScheduledPerformingPhysicianName", (SPS,), True, True, True),
    ("AccessionNumber", (), True, True, True),
    ("PatientBirthDate", (), True, True, True),
    ("StudyInstanceUID", (), True, True, True),
    ("ScheduledProcedureStepID", (SPS,), True, True, True),
    ("ScheduledProcedureStepStatus", (SPS,), True, True, True),
    ("PregnancyStatus", (), False, True, True),  # what dcmjs-dimse sends as 0
    ("PatientWeight", (), False, False, True),
    ("ScheduledStationName", (SPS,), False, False, True),
    ("ScheduledProtocolCodeSequence", (SPS,), False, False, True),
    ("PatientComments", (), False, False, True),  # outside Table K.6-1
    ("ScheduledProcedureStepEndDate", (SPS,), False, False, True),
    ("CodeValue", (SPS, SPCS), True, True, True),  # in the item of a matched sequence
    ("ProtocolContextSequence", (SPS, SPCS), False, False, False),  # "-"
    ("ValueType", (SPS, SPCS, PCS), False, False, False),
    ("DocumentTitle", (PDS,), False, False, False),
    ("ReferencedSOPClassUID", (PDS,), False, False, False),
    ("ReferencedSOPClassUID", (0x00081110,), True, True, True),  # O in Referenced Study Seq.
    ("SpecificCharacterSet", (), False, False, False),  # Table K.6-1a
    ("TimezoneOffsetFromUTC", (), False, False, False),
]


@pytest.mark.parametrize(("keyword", "path", "default", "profile", "every"), MATCHED)
def test_which_keys_are_matched(
    keyword: str, path: tuple[int, ...], default: bool, profile: bool, every: bool
) -> None:
    tag = _tag(keyword)
    assert DEFAULT_MATCHING.matches_on(tag, path) is default
    assert PREGNANCY.matches_on(tag, path) is profile
    assert ALL.matches_on(tag, path) is every


def test_the_table_is_consistent() -> None:
    for key in WORKLIST_KEYS:
        assert key.matching != "R" or key.matched, key.keyword
        assert key.matching != "-" or not key.matched, key.keyword
        assert (key.path[:1] == (SPS,)) is (key.level is Level.SPS), key.keyword
    with pytest.raises(ValueError, match="R key is always matched"):
        WorklistKey("PatientID", Level.TOP, "R", "1")
    with pytest.raises(ValueError, match="matching type"):
        WorklistKey("PatientID", Level.TOP, "X", "1")


def test_rows_of_items_change_neither_expansion_nor_mandatory_keys() -> None:
    # an empty SPS item expands to the SPS keys of the table, not the keys of their items
    assert len(SPS_EXPANSION_TAGS) == 14 and PCS not in SPS_EXPANSION_TAGS
    assert _tag("ValueType") not in MANDATORY_RETURN_TAGS
    assert _tag("PregnancyStatus") in MANDATORY_RETURN_TAGS


@pytest.mark.parametrize(
    ("keyword", "never"),
    [
        ("ProtocolContextSequence", True),
        ("DocumentTitle", True),
        ("SpecificCharacterSet", True),
        ("ReferencedSOPClassUID", False),  # "-" in one sequence, O in another
        ("PregnancyStatus", False),
        ("PatientComments", False),
    ],
)
def test_never_matched(keyword: str, never: bool) -> None:
    assert never_matched(_tag(keyword)) is never
