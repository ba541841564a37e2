"""The declarative table of Modality Worklist keys (PS3.4 Table K.6-1).

Every other module asks this table what a key is: at which level it lives, whether the SCP
must support it as a matching key, whether wlmserver matches on it by default, how it is
returned, and which attribute it pairs with for combined date-time matching. Adding a key means
adding a row.

Which keys are matched (PS3.4 K.2.2.1.1): the required (R) keys of Table K.6-1 always, and a
chosen set of optional (O) keys by default (:attr:`WorklistKey.matched`): those DCMTK's
wlmscpfs matches, which are also the keys modalities and RIS really filter on, and the few that
name one order or step (Study Instance UID, Scheduled Procedure Step ID and Status). Every other
key of a query, an optional key of the table or an attribute outside it, is a return key only:
it "shall be ignored for matching but shall be processed in the same manner as a Return Key
Attribute" (K.2.2.1.1.2), so a ready-made client query that fills in a value it did not mean
(Pregnancy Status 0) never removes an answer. A modality profile may turn matching on for more
keys (:class:`MatchingKeys`); a key whose matching type is ``-`` is never matched.
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


#: The matching key types of Table K.6-1: required, optional, and ``-`` (not a matching key:
#: a return key only, whatever is configured).
MATCHING_TYPES = ("R", "O", "-")


@dataclass(frozen=True)
class WorklistKey:
    """One row of PS3.4 Table K.6-1.

    Attributes
    ----------
    keyword : str
        The pydicom keyword of the attribute.
    level : Level
        Where the attribute lives (the top level, or the SPS item).
    matching : str
        ``"R"`` (required matching key), ``"O"`` (optional matching key) or ``"-"`` (never a
        matching key: a return key only).
    return_type : str
        The return key type: ``"1"``, ``"1C"``, ``"2"``, ``"2C"`` or ``"3"``.
    matched : bool
        Whether wlmserver matches on the key by default: always for R keys, never for ``-``
        keys; for an O key, the choice of this table (PS3.4 K.2.2.1.1.2 lets an SCP treat an
        optional matching key it does not support as a return key). The O keys of an item
        are matched whenever their sequence is.
    within : tuple of str
        The sequences, from the level down, whose item holds the key (``()``: the level
        itself); ``("ScheduledProtocolCodeSequence",)`` for an attribute of its items.
    """

    keyword: str
    level: Level
    matching: str
    return_type: str
    matched: bool = False
    within: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.matching not in MATCHING_TYPES:
            raise ValueError(f"{self.keyword}: matching type {self.matching!r}")
        if (self.matching == "R" and not self.matched) or (self.matching == "-" and self.matched):
            raise ValueError(f"{self.keyword}: an R key is always matched, a - key never")

    @property
    def tag(self) -> int:
        """The attribute's tag as an integer."""
        return _tag(self.keyword)

    @property
    def path(self) -> tuple[int, ...]:
        """The sequence tags leading to the item that holds the key: ``()`` for the top level,
        ``(ScheduledProcedureStepSequence,)`` for the SPS item, deeper for items of items."""
        root = (_tag("ScheduledProcedureStepSequence"),) if self.level is Level.SPS else ()
        return root + tuple(_tag(k) for k in self.within)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


_T, _S = Level.TOP, Level.SPS
_M = True  # matched by default (the column wlmserver adds to the standard's table)
_PROTOCOL_CONTEXT = ("ScheduledProtocolCodeSequence", "ProtocolContextSequence")

#: PS3.4 Table K.6-1, in the order of the standard (the rows of the attributes of items where
#: the table lists them by name: the ``-`` rows, and the references to other SOP instances).
WORKLIST_KEYS: tuple[WorklistKey, ...] = (
    # Scheduled Procedure Step
    WorklistKey("ScheduledProcedureStepSequence", _T, "R", "1", _M),
    WorklistKey("ScheduledStationAETitle", _S, "R", "1", _M),
    WorklistKey("ScheduledProcedureStepStartDate", _S, "R", "1", _M),
    WorklistKey("ScheduledProcedureStepStartTime", _S, "R", "1", _M),
    WorklistKey("Modality", _S, "R", "1", _M),
    WorklistKey("ScheduledPerformingPhysicianName", _S, "R", "2", _M),
    WorklistKey("ScheduledProcedureStepDescription", _S, "O", "1C"),
    WorklistKey("ScheduledStationName", _S, "O", "2"),
    WorklistKey("ScheduledProcedureStepLocation", _S, "O", "2"),
    WorklistKey("ScheduledProtocolCodeSequence", _S, "O", "1C"),
    # "The Protocol Context Sequence and its Items shall not be used for matching"
    WorklistKey("ProtocolContextSequence", _S, "-", "3", within=_PROTOCOL_CONTEXT[:1]),
    WorklistKey("ValueType", _S, "-", "1", within=_PROTOCOL_CONTEXT),
    WorklistKey("ConceptNameCodeSequence", _S, "-", "1", within=_PROTOCOL_CONTEXT),
    WorklistKey("DateTime", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("PersonName", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("TextValue", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("ConceptCodeSequence", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("NumericValue", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("MeasurementUnitsCodeSequence", _S, "-", "1C", within=_PROTOCOL_CONTEXT),
    WorklistKey("PreMedication", _S, "O", "2C"),
    WorklistKey("ScheduledProcedureStepID", _S, "O", "1", _M),
    WorklistKey("RequestedContrastAgent", _S, "O", "2C"),
    WorklistKey("ScheduledProcedureStepStatus", _S, "O", "3", _M),
    WorklistKey("CommentsOnTheScheduledProcedureStep", _S, "O", "3"),
    WorklistKey("ScheduledSpecimenSequence", _T, "O", "3"),
    WorklistKey("ContainerIdentifier", _T, "O", "1", within=("ScheduledSpecimenSequence",)),
    WorklistKey("ContainerTypeCodeSequence", _T, "-", "2", within=("ScheduledSpecimenSequence",)),
    # Requested Procedure
    WorklistKey("RequestedProcedureID", _T, "O", "1", _M),
    WorklistKey("RequestedProcedureDescription", _T, "O", "1C"),
    WorklistKey("RequestedProcedureCodeSequence", _T, "O", "1C"),
    WorklistKey("StudyInstanceUID", _T, "O", "1", _M),
    WorklistKey("StudyDate", _T, "O", "3", _M),
    WorklistKey("StudyTime", _T, "O", "3", _M),
    WorklistKey("ReferencedStudySequence", _T, "O", "2"),
    WorklistKey("ReferencedSOPClassUID", _T, "O", "1", within=("ReferencedStudySequence",)),
    WorklistKey("ReferencedSOPInstanceUID", _T, "O", "1", within=("ReferencedStudySequence",)),
    WorklistKey("RequestedProcedurePriority", _T, "O", "2", _M),
    WorklistKey("PatientTransportArrangements", _T, "O", "2"),
    # Imaging Service Request
    WorklistKey("AccessionNumber", _T, "O", "2", _M),
    WorklistKey("RequestingPhysician", _T, "O", "2", _M),
    WorklistKey("ReferringPhysicianName", _T, "O", "2", _M),
    # Visit
    WorklistKey("AdmissionID", _T, "O", "2", _M),
    WorklistKey("CurrentPatientLocation", _T, "O", "2"),
    WorklistKey("ReferencedPatientSequence", _T, "O", "2"),
    WorklistKey("ReferencedSOPClassUID", _T, "O", "1", within=("ReferencedPatientSequence",)),
    WorklistKey("ReferencedSOPInstanceUID", _T, "O", "1", within=("ReferencedPatientSequence",)),
    # Patient
    WorklistKey("PatientName", _T, "R", "1", _M),
    WorklistKey("PatientID", _T, "R", "1", _M),
    WorklistKey("IssuerOfPatientID", _T, "O", "3", _M),
    WorklistKey("PatientBirthDate", _T, "O", "2", _M),
    WorklistKey("PatientSex", _T, "O", "2", _M),
    WorklistKey("PatientWeight", _T, "O", "2"),
    WorklistKey("ConfidentialityConstraintOnPatientDataDescription", _T, "O", "2"),
    WorklistKey("PatientState", _T, "O", "2"),
    WorklistKey("PregnancyStatus", _T, "O", "2"),
    WorklistKey("MedicalAlerts", _T, "O", "2"),
    WorklistKey("Allergies", _T, "O", "2"),
    WorklistKey("SpecialNeeds", _T, "O", "2"),
    # "Pertinent Documents Sequence shall be retrieved with Universal Matching only"
    WorklistKey("PertinentDocumentsSequence", _T, "O", "3"),
    WorklistKey("ReferencedSOPClassUID", _T, "-", "1", within=("PertinentDocumentsSequence",)),
    WorklistKey("ReferencedSOPInstanceUID", _T, "-", "1", within=("PertinentDocumentsSequence",)),
    WorklistKey(
        "PurposeOfReferenceCodeSequence", _T, "-", "2", within=("PertinentDocumentsSequence",)
    ),
    WorklistKey("DocumentTitle", _T, "-", "2", within=("PertinentDocumentsSequence",)),
)

#: PS3.4 Table K.6-1a: attributes of the C-FIND identifier that are not part of the Worklist
#: Information Model, never matched (C.2.2.2: Specific Character Set "is never matched").
IDENTIFIER_ATTRIBUTES: tuple[WorklistKey, ...] = (
    WorklistKey("SpecificCharacterSet", _T, "-", "1C"),
    WorklistKey("TimezoneOffsetFromUTC", _T, "-", "1C"),
)

#: Rows by where they are: ``(path, tag)`` (see :attr:`WorklistKey.path`).
KEYS_BY_PATH: dict[tuple[tuple[int, ...], int], WorklistKey] = {
    (k.path, k.tag): k for k in WORKLIST_KEYS
}

#: Tags never matched, wherever they are in a query (Table K.6-1a).
NEVER_MATCHED_TAGS: frozenset[int] = frozenset(k.tag for k in IDENTIFIER_ATTRIBUTES)


def never_matched(tag: int) -> bool:
    """Whether an attribute is never a matching key, wherever it is: its every row in Table
    K.6-1 has matching type ``-``, or it is one of Table K.6-1a.

    Examples
    --------
    >>> never_matched(0x00400440), never_matched(0x00081150)  # Protocol Context Sequence; UID
    (True, False)
    """
    rows = [k for k in WORKLIST_KEYS if k.tag == tag]
    return tag in NEVER_MATCHED_TAGS or (bool(rows) and all(k.matching == "-" for k in rows))


@dataclass(frozen=True)
class MatchingKeys:
    """Which keys of a query are matching keys; every other key is a return key only.

    PS3.4 K.2.2.1.1.2: an optional matching key the SCP does not support "shall be ignored for
    matching but shall be processed in the same manner as a Return Key Attribute". By default
    (no setting) the keys matched are the rows of :data:`WORKLIST_KEYS` marked ``matched``;
    a modality profile adds keys (``match-keys``) or matches every attribute by the generic
    C.2.2.2 rule for its VR (``match-all-keys``). Neither ever matches a key whose matching
    type is ``-`` (nor Table K.6-1a's Specific Character Set and Timezone Offset From UTC).

    Attributes
    ----------
    extra : frozenset of int
        Tags matched in addition, wherever they are in the query; a sequence's tag turns
        matching on for the keys of its item.
    all_keys : bool
        Match every attribute, but the ``-`` ones (what earlier versions of wlmserver did).

    Examples
    --------
    >>> PREGNANCY, PATIENT_ID = 0x001021C0, 0x00100020
    >>> DEFAULT_MATCHING.matches_on(PATIENT_ID), DEFAULT_MATCHING.matches_on(PREGNANCY)
    (True, False)
    >>> MatchingKeys(frozenset({PREGNANCY})).matches_on(PREGNANCY)
    True
    """

    extra: frozenset[int] = frozenset()
    all_keys: bool = False

    def matches_on(self, tag: int, path: tuple[int, ...] = ()) -> bool:
        """Whether a key of the query is matched (else it is a return key only).

        Parameters
        ----------
        tag : int
            The key's tag.
        path : tuple of int
            The sequence tags leading to the item that holds it, as :attr:`WorklistKey.path`:
            ``()`` for the top level. The caller asks about a key inside an item only when the
            sequence holding the item is matched.
        """
        row = KEYS_BY_PATH.get((path, tag))
        if tag in NEVER_MATCHED_TAGS or (row is not None and row.matching == "-"):
            return False
        if self.all_keys or tag in self.extra:
            return True
        if row is not None and not row.within:
            return row.matched
        # in the item of a sequence that is matched, its keys are (C.2.2.2.6); any other
        # attribute of the top level or the SPS item is a return key only
        return len(path) > (1 if path[:1] == (_SPS_TAG,) else 0)

    @property
    def is_default(self) -> bool:
        """Whether this is the default set of matching keys."""
        return not (self.extra or self.all_keys)


_SPS_TAG = _tag("ScheduledProcedureStepSequence")

#: The matching keys of a query when no modality profile says otherwise.
DEFAULT_MATCHING = MatchingKeys()

#: The keys matched by default, in the order of Table K.6-1.
DEFAULT_MATCHED: tuple[WorklistKey, ...] = tuple(
    k for k in WORKLIST_KEYS if k.matched and k.keyword != "ScheduledProcedureStepSequence"
)


#: Keys of the top level and the SPS item (not of items of their sequences), by keyword.
KEYS_BY_KEYWORD: dict[str, WorklistKey] = {k.keyword: k for k in WORKLIST_KEYS if not k.within}

#: The tag of the Scheduled Procedure Step Sequence, which the store splits entries by.
SPS_SEQUENCE_TAG: int = KEYS_BY_KEYWORD["ScheduledProcedureStepSequence"].tag

#: Keys an empty Scheduled Procedure Step item in a query expands to: the SPS keys of Table
#: K.6-1 (``--no-sq-expansion`` turns it off). wlmscpfs 3.6.7 expands to a slightly different
#: list (with SPS end date and time, without Scheduled Protocol Code Sequence).
SPS_EXPANSION_TAGS: tuple[int, ...] = tuple(
    k.tag for k in WORKLIST_KEYS if k.level is Level.SPS and not k.within
)

#: Return keys the SCP must return even when empty (Type 1, 1C, 2 and 2C in Table K.6-1); a
#: profile's ``omit-empty-optional`` leaves out only the others when they are empty.
MANDATORY_RETURN_TAGS: frozenset[int] = frozenset(
    k.tag for k in WORKLIST_KEYS if k.return_type != "3" and not k.within
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
