"""The declarative table of Modality Worklist keys (PS3.4 Table K.6-1).

Every other module asks this table what a key is: at which level it lives, whether the SCP
must support it as a matching key, how it is returned, and which attribute it pairs with for
combined date-time matching. Adding a key means adding a row.

Matching itself is not restricted to this table: any attribute an entry carries can be matched
by the generic PS3.4 C.2.2.2 rule for its VR. The table adds what the VR alone cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import keyword_for_tag, tag_for_keyword


class Level(Enum):
    """Where a key lives in a worklist entry."""

    TOP = "top"
    """The entry's top level (patient, visit, imaging service request, requested procedure)."""
    SPS = "sps"
    """Inside the (single) item of the Scheduled Procedure Step Sequence."""


@dataclass(frozen=True)
class WorklistKey:
    """One row of PS3.4 Table K.6-1.

    Attributes
    ----------
    keyword : str
        The pydicom keyword of the attribute.
    level : Level
        Where the attribute lives.
    matching : str
        ``"R"`` (required matching key) or ``"O"`` (optional matching key).
    return_type : str
        The return key type: ``"1"``, ``"1C"``, ``"2"``, ``"2C"`` or ``"3"``.
    """

    keyword: str
    level: Level
    matching: str
    return_type: str

    @property
    def tag(self) -> int:
        """The attribute's tag as an integer."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag


_T, _S = Level.TOP, Level.SPS

#: PS3.4 Table K.6-1, in the order of the standard.
WORKLIST_KEYS: tuple[WorklistKey, ...] = (
    # Scheduled Procedure Step
    WorklistKey("ScheduledProcedureStepSequence", _T, "R", "1"),
    WorklistKey("ScheduledStationAETitle", _S, "R", "1"),
    WorklistKey("ScheduledProcedureStepStartDate", _S, "R", "1"),
    WorklistKey("ScheduledProcedureStepStartTime", _S, "R", "1"),
    WorklistKey("Modality", _S, "R", "1"),
    WorklistKey("ScheduledPerformingPhysicianName", _S, "R", "2"),
    WorklistKey("ScheduledProcedureStepDescription", _S, "O", "1C"),
    WorklistKey("ScheduledStationName", _S, "O", "2"),
    WorklistKey("ScheduledProcedureStepLocation", _S, "O", "2"),
    WorklistKey("ScheduledProtocolCodeSequence", _S, "O", "1C"),
    WorklistKey("PreMedication", _S, "O", "2C"),
    WorklistKey("ScheduledProcedureStepID", _S, "O", "1"),
    WorklistKey("RequestedContrastAgent", _S, "O", "2C"),
    WorklistKey("ScheduledProcedureStepStatus", _S, "O", "3"),
    WorklistKey("CommentsOnTheScheduledProcedureStep", _S, "O", "3"),
    # Requested Procedure
    WorklistKey("RequestedProcedureID", _T, "O", "1"),
    WorklistKey("RequestedProcedureDescription", _T, "O", "1C"),
    WorklistKey("RequestedProcedureCodeSequence", _T, "O", "1C"),
    WorklistKey("StudyInstanceUID", _T, "O", "1"),
    WorklistKey("StudyDate", _T, "O", "3"),
    WorklistKey("StudyTime", _T, "O", "3"),
    WorklistKey("ReferencedStudySequence", _T, "O", "2"),
    WorklistKey("RequestedProcedurePriority", _T, "O", "2"),
    WorklistKey("PatientTransportArrangements", _T, "O", "2"),
    # Imaging Service Request
    WorklistKey("AccessionNumber", _T, "O", "2"),
    WorklistKey("RequestingPhysician", _T, "O", "2"),
    WorklistKey("ReferringPhysicianName", _T, "O", "2"),
    # Visit
    WorklistKey("AdmissionID", _T, "O", "2"),
    WorklistKey("CurrentPatientLocation", _T, "O", "2"),
    WorklistKey("ReferencedPatientSequence", _T, "O", "2"),
    # Patient
    WorklistKey("PatientName", _T, "R", "1"),
    WorklistKey("PatientID", _T, "R", "1"),
    WorklistKey("IssuerOfPatientID", _T, "O", "3"),
    WorklistKey("PatientBirthDate", _T, "O", "2"),
    WorklistKey("PatientSex", _T, "O", "2"),
    WorklistKey("PatientWeight", _T, "O", "2"),
    WorklistKey("ConfidentialityConstraintOnPatientDataDescription", _T, "O", "2"),
    WorklistKey("PatientState", _T, "O", "2"),
    WorklistKey("PregnancyStatus", _T, "O", "2"),
    WorklistKey("MedicalAlerts", _T, "O", "2"),
    WorklistKey("Allergies", _T, "O", "2"),
    WorklistKey("SpecialNeeds", _T, "O", "2"),
)

#: Keys by keyword.
KEYS_BY_KEYWORD: dict[str, WorklistKey] = {k.keyword: k for k in WORKLIST_KEYS}

#: The tag of the Scheduled Procedure Step Sequence, which the store splits entries by.
SPS_SEQUENCE_TAG: int = KEYS_BY_KEYWORD["ScheduledProcedureStepSequence"].tag

#: Keys an empty Scheduled Procedure Step item in a query expands to: the SPS keys of Table
#: K.6-1 (``--no-sq-expansion`` turns it off). wlmscpfs 3.6.7 expands to a slightly different
#: list (with SPS end date and time, without Scheduled Protocol Code Sequence).
SPS_EXPANSION_TAGS: tuple[int, ...] = tuple(k.tag for k in WORKLIST_KEYS if k.level is Level.SPS)

#: Return keys the SCP must return even when empty (Type 1, 1C, 2 and 2C in Table K.6-1); a
#: profile's ``omit-empty-optional`` leaves out only the others when they are empty.
MANDATORY_RETURN_TAGS: frozenset[int] = frozenset(
    k.tag for k in WORKLIST_KEYS if k.return_type != "3"
)

#: Date and time attributes matched as one combined date-time range (PS3.4 C.2.2.2.5.1),
#: as ``(date tag, time tag)`` pairs.
COMBINED_DATE_TIME: tuple[tuple[int, int], ...] = tuple(
    (tag_for_keyword(d) or 0, tag_for_keyword(t) or 0)
    for d, t in (
        ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"),
        ("ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime"),
        ("StudyDate", "StudyTime"),
    )
)

#: Type 1 return keys an entry must carry with a value, per level. A tuple of alternatives means
#: "at least one of these" (the 1C pairs: description or code sequence).
REQUIRED_TOP: tuple[tuple[str, ...], ...] = (
    ("PatientName",),
    ("PatientID",),
    ("StudyInstanceUID",),
    ("RequestedProcedureID",),
    ("RequestedProcedureDescription", "RequestedProcedureCodeSequence"),
)
REQUIRED_SPS: tuple[tuple[str, ...], ...] = (
    ("ScheduledStationAETitle",),
    ("ScheduledProcedureStepStartDate",),
    ("ScheduledProcedureStepStartTime",),
    ("Modality",),
    ("ScheduledProcedureStepID",),
    ("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence"),
)

#: Value representations on which ``*`` and ``?`` are wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS: frozenset[str] = frozenset(
    {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
)

#: Value representations that hold text in the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS: frozenset[str] = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})

#: Value representations whose backslash is a character, not a value separator.
SINGLE_VALUED_TEXT_VRS: frozenset[str] = frozenset({"LT", "ST", "UT", "UR"})

#: Numeric value representations, compared by value rather than by spelling.
NUMERIC_VRS: frozenset[str] = frozenset(
    {"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
)


def describe_tag(tag: int) -> str:
    """Return ``"Keyword (gggg,eeee)"`` for log lines and error comments.

    Examples
    --------
    >>> describe_tag(0x00100010)
    'PatientName (0010,0010)'
    """
    keyword = keyword_for_tag(tag) or "Unknown"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
