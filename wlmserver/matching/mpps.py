"""The rules of Modality Performed Procedure Step (PS3.4 Annex F), with no file or network code.

A modality tells the information system what it does with a scheduled step through one SOP
instance of the MPPS SOP Class (1.2.840.10008.3.1.2.3.3): an N-CREATE when the exam starts
(status IN PROGRESS), then N-SETs, the last one with COMPLETED or DISCONTINUED. This module
holds everything about that which is not storage or networking, so that the on-disk store
(:mod:`wlmserver.store.mpps`), the DIMSE handlers (:mod:`wlmserver.service.mpps`) and, later,
the worklist side and the ``wlmserver mpps`` tool share one reading of the standard:

- :data:`ATTRIBUTES`, PS3.4 Table F.7.2-1 as one declarative table: what N-CREATE requires,
  what N-SET may change, and what must hold in the final state;
- :func:`check_create` and :func:`apply_set`, the F.7.2.1.3 and F.7.2.2.3 rules (the state
  machine of PS3.4 F.1.5 included), which either return the instance to store or raise
  :class:`MppsError` carrying the DIMSE status (PS3.7 Annex C) and an ErrorComment;
- :class:`PerformedSteps`, the link from scheduled steps to the MPPS instances that perform
  them (through the Scheduled Step Attributes Sequence (0040,0270)): an immutable snapshot, so
  a C-FIND answer can ask "what is the performed status of this step" with a dictionary
  look-up while N-CREATEs and N-SETs replace the snapshot.

Nothing is validated beyond what the standard asks of the SCP and what the rest of wlmserver
relies on (UIDs, dates and times): "all other Attributes" of the IOD are Type 3 in both
columns of Table F.7.2-1, so a modality may send more than the table lists.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import NamedTuple

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from wlmserver.matching.query import ERROR_COMMENT_LENGTH, fit_comment

#: The Modality Performed Procedure Step SOP Class (PS3.4 F.7, PS3.6 Annex A).
MPPS_SOP_CLASS = UID("1.2.840.10008.3.1.2.3.3")


class PpsStatus(str, Enum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14 and PS3.4 Table F.1-3."""

    IN_PROGRESS = "IN PROGRESS"
    """Created, execution in progress: the only state N-CREATE may create and N-SET may update."""
    COMPLETED = "COMPLETED"
    """Acquisition completed; final."""
    DISCONTINUED = "DISCONTINUED"
    """Cancelled or unsuccessfully terminated by the modality; final."""

    @property
    def is_final(self) -> bool:
        """Whether the instance may no longer be updated (PS3.4 F.7.2.2.2, F.7.2.2.3)."""
        return self is not PpsStatus.IN_PROGRESS


class MppsStatus(IntEnum):
    """The DIMSE statuses an MPPS SCP answers with (PS3.7 Annex C, PS3.4 F.7.2.1.4, F.7.2.2.4)."""

    SUCCESS = 0x0000
    NO_SUCH_ATTRIBUTE = 0x0105
    """PS3.7 C.5.8 (N-SET) / C.5.x: an attribute that may not be set: here, one Table F.7.2-1
    marks "Not allowed" for N-SET, given with a value other than the stored one, or a
    command or file meta element inside the attribute list."""
    INVALID_ATTRIBUTE_VALUE = 0x0106
    """A value not valid for the attribute; also an N-CREATE whose status is not IN PROGRESS
    (PS3.4 F.7.2.1.3)."""
    PROCESSING_FAILURE = 0x0110
    """PS3.4 Table F.7.2-2: N-SET of an instance that is COMPLETED or DISCONTINUED, with
    ErrorComment "Performed Procedure Step Object may no longer be updated" and Error ID
    A710H; also a failure of the SCP itself (the store cannot write)."""
    DUPLICATE_SOP_INSTANCE = 0x0111
    """N-CREATE of a SOP Instance UID that exists."""
    NO_SUCH_SOP_INSTANCE = 0x0112
    """N-SET of a SOP Instance UID that does not exist."""
    INVALID_OBJECT_INSTANCE = 0x0117
    """The SOP Instance UID violates the UID construction rules (PS3.5 9.1)."""
    NO_SUCH_SOP_CLASS = 0x0118
    """A request for another SOP Class than MPPS."""
    MISSING_ATTRIBUTE = 0x0120
    """A required attribute is absent."""
    MISSING_ATTRIBUTE_VALUE = 0x0121
    """A Type 1 attribute is present but empty (a Type 1 sequence: without an item)."""
    UNRECOGNIZED_OPERATION = 0x0211
    """Unrecognized Operation (PS3.7 Annex C: the operation is not one of those agreed between
    the DIMSE-service-users): an N-CREATE or N-SET sent on a presentation context negotiated
    for another SOP Class, such as the worklist's C-FIND one. One of the N-CREATE and N-SET
    statuses of MPPS (PS3.2 Tables N.7-12 and N.7-13); 0122H, Refused: SOP Class not
    Supported, is not."""
    RESOURCE_LIMITATION = 0x0213
    """PS3.7 10.1.5.1.6 (N-CREATE) and 10.1.3.1.9 (N-SET): not performed for lack of a
    resource: a request, an instance or a folder over its limit, or no space left on the
    disk. Nothing is stored; the same request may succeed later (a forwarder retries it)."""


#: PS3.4 Table F.7.2-2: the Error Comment and Error ID (0000,0903) of an N-SET refused because
#: the instance is no longer IN PROGRESS.
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"
NO_LONGER_UPDATABLE_ERROR_ID = 0xA710


class MppsError(Exception):
    """An N-CREATE or N-SET the SCP refuses; nothing is stored.

    Parameters
    ----------
    status : MppsStatus
        The DIMSE status to answer with.
    comment : str
        What is wrong, naming the attribute, never its value (it may be patient data); fitted
        to the 64 characters of ErrorComment (0000,0902).
    tags : tuple of int
        The offending attributes (for Attribute Identifier List (0000,1005) where the
        response carries one).
    error_id : int or None
        Error ID (0000,0903), where the standard assigns one (PS3.4 Table F.7.2-2).
    internal : bool
        The SCP failed (its disk), not the request: worth an ERROR line, not a WARNING.
    detail : str
        What the log says besides the comment (a folder, a system error); never patient data.
    """

    def __init__(
        self,
        status: MppsStatus,
        comment: str,
        tags: tuple[int, ...] = (),
        error_id: int | None = None,
        *,
        internal: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = fit_comment(comment)
        self.tags = tags
        self.error_id = error_id
        self.internal = internal
        self.detail = detail


# --------------------------------------------------------------------------- Table F.7.2-1

#: Requirement types: "1" present with a value, "2" present (may be empty), "3" optional.
#: ``None`` in the N-SET column is the table's "Not allowed".
ReqType = str


@dataclass(frozen=True)
class Attribute:
    """One row of PS3.4 Table F.7.2-1.

    Attributes
    ----------
    keyword : str
        The attribute.
    create : str
        Requirement type in an N-CREATE (SCU column).
    set : str or None
        Requirement type in an N-SET; None: "Not allowed" (the SCU may not change it).
    final : str or None
        Requirement type when the status is N-SET to COMPLETED or DISCONTINUED, where the
        table gives one.
    items : tuple of Attribute
        For a sequence, the rows of its items.
    """

    keyword: str
    create: ReqType
    set: ReqType | None
    final: ReqType | None = None
    items: tuple[Attribute, ...] = ()

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return int(tag)


def _row(
    keyword: str,
    create: ReqType,
    set: ReqType | None = None,
    final: ReqType | None = None,
    *items: Attribute,
) -> Attribute:
    return Attribute(keyword, create, set, final, items)


_SOP_REFERENCE = (
    _row("ReferencedSOPClassUID", "1", "1"),
    _row("ReferencedSOPInstanceUID", "1", "1"),
)
_FIXED_SOP_REFERENCE = (_row("ReferencedSOPClassUID", "1"), _row("ReferencedSOPInstanceUID", "1"))

#: PS3.4 Table F.7.2-1, Modality Performed Procedure Step SOP Class N-CREATE, N-SET and Final
#: State Attributes (code sequence macros, whose members are 1C, are not checked inside). "All
#: other Attributes" of the IOD are 3/3 and so not listed.
ATTRIBUTES: tuple[Attribute, ...] = (
    # SOP Common (1C/1C: the character set; see apply_set)
    _row("SpecificCharacterSet", "3", "3"),
    # Performed Procedure Step Relationship
    _row(
        "ScheduledStepAttributesSequence",
        "1",
        None,
        None,
        _row("StudyInstanceUID", "1"),
        _row("ReferencedStudySequence", "2", None, None, *_FIXED_SOP_REFERENCE),
        _row("AccessionNumber", "2"),
        _row("IssuerOfAccessionNumberSequence", "3"),
        _row("PlacerOrderNumberImagingServiceRequest", "3"),
        _row("OrderPlacerIdentifierSequence", "3"),
        _row("FillerOrderNumberImagingServiceRequest", "3"),
        _row("OrderFillerIdentifierSequence", "3"),
        _row("RequestedProcedureID", "2"),
        _row("RequestedProcedureCodeSequence", "3"),
        _row("RequestedProcedureDescription", "2"),
        _row("ScheduledProcedureStepID", "2"),
        _row("ScheduledProcedureStepDescription", "2"),
        _row("ScheduledProtocolCodeSequence", "2"),
    ),
    _row("PatientName", "2"),
    _row("PatientID", "2"),
    _row("IssuerOfPatientID", "3"),
    _row("IssuerOfPatientIDQualifiersSequence", "3"),
    _row("OtherPatientIDsSequence", "3"),
    _row("PatientBirthDate", "2"),
    _row("PatientSex", "2"),
    _row("ReferencedPatientSequence", "2", None, None, *_FIXED_SOP_REFERENCE),
    _row("AdmissionID", "3"),
    _row("IssuerOfAdmissionIDSequence", "3"),
    _row("ServiceEpisodeID", "3"),
    _row("IssuerOfServiceEpisodeIDSequence", "3"),
    _row("ServiceEpisodeDescription", "3"),
    # Performed Procedure Step Information
    _row("PerformedProcedureStepID", "1"),
    _row("PerformedStationAETitle", "1"),
    _row("PerformedStationName", "2"),
    _row("PerformedLocation", "2"),
    _row("PerformedProcedureStepStartDate", "1"),
    _row("PerformedProcedureStepStartTime", "1"),
    _row("PerformedProcedureStepStatus", "1", "3", "1"),
    _row("PerformedProcedureStepDescription", "2", "3"),
    _row("PerformedProcedureTypeDescription", "2", "3"),
    _row("ProcedureCodeSequence", "2", "3"),
    _row("ReasonForPerformedProcedureCodeSequence", "3", "3"),
    _row("PerformedProcedureStepEndDate", "2", "3", "1"),
    _row("PerformedProcedureStepEndTime", "2", "3", "1"),
    _row("CommentsOnThePerformedProcedureStep", "3", "3"),
    _row("PerformedProcedureStepDiscontinuationReasonCodeSequence", "3", "3"),
    # Image Acquisition Results
    _row("Modality", "1"),
    _row("StudyID", "2"),
    _row("PerformedProtocolCodeSequence", "2", "3"),
    _row(
        "PerformedSeriesSequence",
        "2",
        "3",
        "1",  # Note 2: not empty in the final state, a series exists for every step
        _row("PerformingPhysicianName", "2", "2"),
        _row("ProtocolName", "1", "1"),
        _row("OperatorsName", "2", "2"),
        _row("SeriesInstanceUID", "1", "1"),
        _row("SeriesDescription", "2", "2"),
        _row("RetrieveAETitle", "2", "2"),
        _row("ArchiveRequested", "3", "3"),
        _row("ReferencedImageSequence", "2", "2", None, *_SOP_REFERENCE),
        _row("ReferencedNonImageCompositeSOPInstanceSequence", "2", "2", None, *_SOP_REFERENCE),
    ),
)

_BY_TAG = {a.tag: a for a in ATTRIBUTES}

#: The attributes an N-SET may not change (Table F.7.2-1, "Not allowed" in the N-SET column).
NOT_SETTABLE: frozenset[str] = frozenset(a.keyword for a in ATTRIBUTES if a.set is None)

_STATUS = 0x00400252  # PerformedProcedureStepStatus
_SPECIFIC_CHARACTER_SET = 0x00080005
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
#: UTF-8: what a merged instance is stored in when an N-SET brings another character set.
_UTF8 = "ISO_IR 192"

# PS3.5 9.1: components of digits without leading zeros (except "0"), dot-separated, at most 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?")


def is_valid_uid(uid: str) -> bool:
    """Whether a UID follows PS3.5 9.1 (which also makes it safe as a file name).

    Examples
    --------
    >>> [is_valid_uid(u) for u in ("1.2.840.10008", "1.02.3", "1..2", "../etc", "1" * 65)]
    [True, False, False, False, False]
    """
    return 0 < len(uid) <= 64 and _UID.fullmatch(uid) is not None


# --------------------------------------------------------------------------- the checks


def _tag_name(name: str) -> str:
    """``Keyword[2]`` as ``(gggg,eeee)[2]``; a name that is no keyword as it is."""
    keyword, bracket, rest = name.partition("[")
    tag = tag_for_keyword(keyword)
    if tag is None:
        return name
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" + bracket + rest


def _comment(path: tuple[str, ...], keyword: str, rule: str) -> str:
    """An ErrorComment naming a (nested) attribute, in PS3.3's ``>`` notation: keywords where
    they fit in the 64 characters, else the enclosing sequences as tags, else all tags."""
    for names in (
        (*path, keyword),
        (*map(_tag_name, path), keyword),
        (*map(_tag_name, path), _tag_name(keyword)),
    ):
        text = f"{'>'.join(names)}: {rule}"
        if len(text) <= ERROR_COMMENT_LENGTH:
            return text
    return fit_comment(text)


def _is_empty(element: DataElement) -> bool:
    value = element.value
    if value is None:
        return True
    if isinstance(value, (Sequence, MultiValue, list, bytes)):
        return len(value) == 0
    if isinstance(value, (int, float)):
        return False
    return not str(value).strip(" \0")


def _check_required(
    ds: Dataset,
    rows: Iterable[Attribute],
    column: str,
    path: tuple[str, ...],
    lenient: list[str],
) -> None:
    """Raise for an absent or empty Type 1 attribute (``column``: which requirement,
    "create", "set" or "final"), recursing into the items of sequences present.

    An absent Type 2 attribute is only noted in ``lenient``: Table F.7.2-1 asks the SCU for
    it, but refusing the whole step for an empty value the modality left out would lose what
    the step says (see :func:`check_create`).
    """
    for row in rows:
        wanted: str | None = getattr(row, column)
        element = ds.get(row.tag)
        if element is None:
            if wanted == "1":
                raise MppsError(
                    MppsStatus.MISSING_ATTRIBUTE,
                    _comment(path, row.keyword, f"missing (required, Type {wanted})"),
                    (row.tag,),
                )
            if wanted == "2":
                lenient.append(">".join((*path, row.keyword)))
            continue
        if wanted == "1" and _is_empty(element):
            rule = "needs an item" if element.VR == "SQ" else "needs a value"
            raise MppsError(
                MppsStatus.MISSING_ATTRIBUTE_VALUE,
                _comment(path, row.keyword, f"{rule} (Type 1)"),
                (row.tag,),
            )
        if row.items and element.VR == "SQ":
            item_column = "create" if column == "final" else column
            for number, item in enumerate(element.value, 1):
                nested = (
                    (*path, f"{row.keyword}[{number}]")
                    if len(element.value) > 1
                    else (
                        *path,
                        row.keyword,
                    )
                )
                _check_required(item, row.items, item_column, nested, lenient)


def _check_values(ds: Dataset, path: tuple[str, ...] = ()) -> None:
    """Raise for a UID, date or time that does not follow PS3.5 6.2 (the values the rest of
    wlmserver relies on), anywhere in the dataset."""
    for element in ds:
        if element.VR == "SQ":
            for number, item in enumerate(element.value, 1):
                _check_values(item, (*path, f"{element.keyword or element.tag}[{number}]"))
            continue
        if element.VR not in ("UI", "DA", "TM") or _is_empty(element):
            continue
        values = element.value if isinstance(element.value, (MultiValue, list)) else [element.value]
        pattern, rule = {
            "UI": (_UID, "not a valid UID"),
            "DA": (_DATE, "use YYYYMMDD"),
            "TM": (_TIME, "use HHMMSS"),
        }[element.VR]
        for value in values:
            text = str(value).strip(" \0")
            if not text:
                continue
            if pattern.fullmatch(text) is None or (element.VR == "UI" and len(text) > 64):
                raise MppsError(
                    MppsStatus.INVALID_ATTRIBUTE_VALUE,
                    _comment(path, element.keyword or str(element.tag), rule),
                    (int(element.tag),),
                )


def _check_no_command_elements(ds: Dataset) -> None:
    for element in ds:
        if element.tag.group < 0x0008:
            raise MppsError(
                MppsStatus.NO_SUCH_ATTRIBUTE,
                f"{element.tag}: no command or file meta element in an attribute list",
                (int(element.tag),),
            )


def _status_of(ds: Dataset) -> PpsStatus | None:
    element = ds.get(_STATUS)
    if element is None or _is_empty(element):
        return None
    try:
        return PpsStatus(str(element.value).strip())
    except ValueError:
        raise MppsError(
            MppsStatus.INVALID_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStatus: use IN PROGRESS, COMPLETED or DISCONTINUED",
            (_STATUS,),
        ) from None


def decode(ds: Dataset) -> None:
    """Decode every element of a received dataset (pydicom decodes lazily), so that a value
    that does not decode fails here, and the dataset no longer depends on the character set
    it arrived in."""
    for _ in ds.iterall():
        pass


def _check_uid(uid: str) -> None:
    if not is_valid_uid(uid):
        raise MppsError(
            MppsStatus.INVALID_OBJECT_INSTANCE,
            "SOP Instance UID: not a valid UID (PS3.5 9.1)",
        )


@dataclass
class Checked:
    """An N-CREATE or N-SET that passed :func:`check_create` or :func:`apply_set`.

    Attributes
    ----------
    instance : Dataset
        The whole MPPS instance to store (SOP Class UID and SOP Instance UID included).
    lenient : list of str
        The Type 2 attributes the N-CREATE left out (accepted; worth a warning).
    """

    instance: Dataset
    lenient: list[str] = field(default_factory=list)


def check_create(uid: str, attributes: Dataset | None) -> Checked:
    """Check an N-CREATE and build the instance to store (PS3.4 F.7.2.1).

    Parameters
    ----------
    uid : str
        The Affected SOP Instance UID (the SCU's, or one the SCP generated).
    attributes : Dataset or None
        The N-CREATE Attribute List (decoded: see :func:`decode`).

    Returns
    -------
    Checked
        The instance: the attribute list with SOP Class UID and SOP Instance UID.

    Raises
    ------
    MppsError
        0x0117 for a UID that is not valid; 0x0120 for an absent Type 1 attribute (Table
        F.7.2-1); 0x0121 for an empty one; 0x0106 for a status other than IN PROGRESS (PS3.4
        F.7.2.1.3) or a UID, date or time not valid for its VR; 0x0105 for a command element.

    Notes
    -----
    Type 2 attributes left out are accepted and listed in :attr:`Checked.lenient`: an MPPS
    that names its steps is worth keeping even when, say, Patient's Sex is missing.

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.PerformedProcedureStepStatus = "COMPLETED"
    >>> check_create("1.2.3", ds)
    Traceback (most recent call last):
    ...
    wlmserver.matching.mpps.MppsError: ScheduledStepAttributesSequence: missing (required, Type 1)
    """
    _check_uid(uid)
    if attributes is None:
        raise MppsError(MppsStatus.MISSING_ATTRIBUTE, "no attribute list: see PS3.4 F.7.2-1")
    _check_no_command_elements(attributes)
    lenient: list[str] = []
    _check_required(attributes, ATTRIBUTES, "create", (), lenient)
    status = _status_of(attributes)
    if status is not PpsStatus.IN_PROGRESS:
        raise MppsError(
            MppsStatus.INVALID_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStatus: must be IN PROGRESS at N-CREATE",
            (_STATUS,),
        )
    _check_values(attributes)
    _check_identity(attributes, uid)
    instance = Dataset()
    instance.update(attributes)  # (Dataset(attributes) would share its element dictionary)
    instance.SOPClassUID = MPPS_SOP_CLASS
    instance.SOPInstanceUID = uid
    return Checked(instance, lenient)


def _check_identity(ds: Dataset, uid: str) -> None:
    """An attribute list naming another SOP Class or Instance than the request is refused."""
    for tag, wanted, name in (
        (_SOP_CLASS_UID, MPPS_SOP_CLASS, "SOPClassUID"),
        (_SOP_INSTANCE_UID, uid, "SOPInstanceUID"),
    ):
        element = ds.get(tag)
        if element is not None and not _is_empty(element) and str(element.value) != wanted:
            raise MppsError(
                MppsStatus.INVALID_ATTRIBUTE_VALUE,
                f"{name}: differs from the request's",
                (tag,),
            )


def apply_set(current: Dataset, modification: Dataset | None) -> Checked:
    """Check an N-SET against the stored instance and return the updated instance
    (PS3.4 F.7.2.2); ``current`` is not changed.

    Parameters
    ----------
    current : Dataset
        The stored instance.
    modification : Dataset or None
        The N-SET Modification List (decoded: see :func:`decode`; one without a Specific
        Character Set must be decoded in ``current``'s, as PS3.4 F.7.2.2.1 says both use the
        same).

    Returns
    -------
    Checked
        The instance with the modification applied: each attribute given replaces the stored
        one (a sequence with all its items, F.7.2.2.2; an empty value empties it).

    Raises
    ------
    MppsError
        0x0110 with Error ID A710H when ``current`` is COMPLETED or DISCONTINUED (PS3.4
        F.7.2.2.3, Table F.7.2-2); 0x0105 for an attribute Table F.7.2-1 does not allow N-SET
        to change (given with its stored value, it is accepted: modalities often send back
        what they created) or a command element; 0x0106 for a status value that is not one of
        the three or a value not valid for its VR; 0x0120 and 0x0121 for what the final state
        requires (End Date, End Time, a Performed Series Sequence item) or an item of a
        sequence set lacks.

    Examples
    --------
    >>> done = Dataset()
    >>> done.PerformedProcedureStepStatus = "COMPLETED"
    >>> apply_set(done, Dataset())
    Traceback (most recent call last):
    ...
    wlmserver.matching.mpps.MppsError: Performed Procedure Step Object may no longer be updated
    """
    stored = _status_of(current)
    if stored is None or stored.is_final:
        raise MppsError(
            MppsStatus.PROCESSING_FAILURE,
            NO_LONGER_UPDATABLE,
            error_id=NO_LONGER_UPDATABLE_ERROR_ID,
        )
    if modification is None:
        modification = Dataset()
    _check_no_command_elements(modification)
    _check_identity(modification, str(current.get("SOPInstanceUID", "")))
    for element in modification:
        row = _BY_TAG.get(int(element.tag))
        if row is None or row.set is not None:
            continue
        if element != current.get(element.tag):
            raise MppsError(
                MppsStatus.NO_SUCH_ATTRIBUTE,
                f"{row.keyword}: N-SET may not change it (PS3.4 F.7.2-1)",
                (row.tag,),
            )
    lenient: list[str] = []
    settable = [a for a in ATTRIBUTES if a.set is not None and a.tag in modification]
    _check_required(modification, settable, "set", (), lenient)
    status = _status_of(modification)
    if status is None and _STATUS in modification:
        raise MppsError(
            MppsStatus.MISSING_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStatus: needs a value",
            (_STATUS,),
        )
    _check_values(modification)
    merged = copy.deepcopy(current)  # the stored instance stays as it is
    charset = modification.get(_SPECIFIC_CHARACTER_SET)
    if charset is not None and charset.value != current.get("SpecificCharacterSet"):
        # the values are decoded text by now: store them all in UTF-8 rather than refuse the
        # exam's end or mislabel a character
        merged.SpecificCharacterSet = _UTF8
    for element in modification:
        if element.tag != _SPECIFIC_CHARACTER_SET:
            merged[element.tag] = element
    if status is not None and status.is_final:
        _check_required(merged, [a for a in ATTRIBUTES if a.final], "final", (), lenient)
    return Checked(merged, lenient)


# --------------------------------------------------------------------------- the link to steps


class StepKey(NamedTuple):
    """What identifies a scheduled procedure step in a worklist entry and in an MPPS item of
    the Scheduled Step Attributes Sequence (0040,0270), PS3.4 F.7.2-1 and K.6-1."""

    study_instance_uid: str
    requested_procedure_id: str
    scheduled_procedure_step_id: str
    accession_number: str


@dataclass(frozen=True, slots=True)
class Performed:
    """What the link knows of one MPPS instance.

    Attributes
    ----------
    sop_instance_uid : str
        The MPPS instance.
    status : PpsStatus
        Its Performed Procedure Step Status.
    steps : tuple of StepKey
        The scheduled steps it performs: the items of its Scheduled Step Attributes Sequence
        that name a Scheduled Procedure Step ID. More than one: the group case (PS3.4
        F.7.2.1.2 Note 2; IHE RAD SWF "group case").
    referenced_studies : tuple of str
        The Referenced Study Sequence UIDs of those items: in the group case the item's Study
        Instance UID may be one the modality generated, and these name the requested ones.
    started : str
        Performed Procedure Step Start Date and Time, ``YYYYMMDDHHMMSS...``, for ordering.
    order : int
        Arrival order among instances (ties of ``started``; then the UID decides: the
        instances read at start all have 0).
    """

    sop_instance_uid: str
    status: PpsStatus
    steps: tuple[StepKey, ...]
    referenced_studies: tuple[str, ...] = ()
    started: str = ""
    order: int = 0

    @property
    def unscheduled(self) -> bool:
        """Whether no item names a scheduled step (PS3.4 F.7.2.1.2 Note 3: the modality had no
        worklist entry; IHE RAD SWF "unscheduled case")."""
        return not self.steps

    def lookup_keys(self) -> Iterator[tuple[str, str, str, str]]:
        """The look-up keys of its steps: by Study Instance UID (the item's and the
        referenced ones) and, where the item has one, by Accession Number, each with the
        Requested Procedure ID and Scheduled Procedure Step ID."""
        for step in self.steps:
            rp, sps = step.requested_procedure_id, step.scheduled_procedure_step_id
            own = step.study_instance_uid
            if own:
                yield ("study", own, rp, sps)
            for study in self.referenced_studies:  # distinct already (see performed_from)
                if study and study != own:
                    yield ("study", study, rp, sps)
            if step.accession_number:
                yield ("accession", step.accession_number, rp, sps)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \0")


def performed_from(instance: Dataset, order: int = 0) -> Performed:
    """The link's view of a stored MPPS instance (one that passed :func:`check_create`).

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.SOPInstanceUID = "1.2.3"
    >>> ds.PerformedProcedureStepStatus = "IN PROGRESS"
    >>> item = Dataset()
    >>> item.StudyInstanceUID = "1.2.4"
    >>> item.RequestedProcedureID = "RP1"
    >>> item.ScheduledProcedureStepID = "SPS1"
    >>> item.AccessionNumber = ""
    >>> ds.ScheduledStepAttributesSequence = [item]
    >>> [tuple(step) for step in performed_from(ds).steps]
    [('1.2.4', 'RP1', 'SPS1', '')]
    """
    steps: list[StepKey] = []
    referenced: list[str] = []
    for item in instance.get("ScheduledStepAttributesSequence") or []:
        key = StepKey(
            _text(item, "StudyInstanceUID"),
            _text(item, "RequestedProcedureID"),
            _text(item, "ScheduledProcedureStepID"),
            _text(item, "AccessionNumber"),
        )
        if not key.scheduled_procedure_step_id and not key.requested_procedure_id:
            continue  # an item of the unscheduled case: nothing in the worklist to link to
        steps.append(key)
        for ref in item.get("ReferencedStudySequence") or []:
            uid = _text(ref, "ReferencedSOPInstanceUID")
            if uid:
                referenced.append(uid)
    status = _status_of(instance) or PpsStatus.IN_PROGRESS
    time = _text(instance, "PerformedProcedureStepStartTime")
    started = _text(instance, "PerformedProcedureStepStartDate") + time[:6].ljust(6, "0") + time[6:]
    return Performed(
        str(instance.SOPInstanceUID),
        status,
        tuple(dict.fromkeys(steps)),
        tuple(dict.fromkeys(referenced)),
        started,
        order,
    )


def _arrival(performed: Performed) -> tuple[str, int, str]:
    """The order of the instances performing one step: by start, then arrival, then UID."""
    return (performed.started, performed.order, performed.sop_instance_uid)


class PerformedSteps:
    """Which MPPS instances perform which scheduled steps: an immutable snapshot.

    Replace it with :meth:`with_performed` (copy-on-write, no lock needed by readers: a reader
    keeps the snapshot it took). A look-up is one or two dictionary reads, cheap enough for
    every C-FIND answer.

    Parameters
    ----------
    performed : iterable of Performed
        The instances.

    Examples
    --------
    >>> step = StepKey("1.2.4", "RP1", "SPS1", "A1")
    >>> a = Performed("1.9.1", PpsStatus.DISCONTINUED, (step,), started="20260101090000")
    >>> b = Performed("1.9.2", PpsStatus.COMPLETED, (step,), started="20260101100000", order=1)
    >>> steps = PerformedSteps([a]).with_performed(b)
    >>> steps.status(step)
    <PpsStatus.COMPLETED: 'COMPLETED'>
    >>> steps.status(StepKey("9.9", "RP1", "SPS1", "A1"))  # found by accession number
    <PpsStatus.COMPLETED: 'COMPLETED'>
    >>> steps.status(StepKey("1.2.4", "RP1", "SPS2", "A1")) is None
    True
    """

    __slots__ = ("_by_key", "_by_uid")

    def __init__(self, performed: Iterable[Performed] = ()) -> None:
        # built in one pass (a start builds it from every instance held): each key's list
        # sorted once, not once per instance added
        by_uid: dict[str, Performed] = {}
        for one in performed:
            by_uid[one.sop_instance_uid] = one
        lists: dict[tuple[str, str, str, str], list[str]] = {}
        for uid, one in by_uid.items():
            keys = one.lookup_keys()
            for key in dict.fromkeys(keys) if len(one.steps) > 1 else keys:
                uids = lists.get(key)
                if uids is None:
                    lists[key] = [uid]
                else:
                    uids.append(uid)
        self._by_uid = by_uid
        self._by_key: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
        for key, uids in lists.items():
            if len(uids) > 1:
                uids.sort(key=lambda u: _arrival(by_uid[u]))
            self._by_key[key] = tuple(uids)

    def _add(self, performed: Performed) -> None:
        old = self._by_uid.get(performed.sop_instance_uid)
        if old is not None:
            for key in old.lookup_keys():
                left = tuple(u for u in self._by_key.get(key, ()) if u != old.sop_instance_uid)
                if left:
                    self._by_key[key] = left
                else:
                    self._by_key.pop(key, None)
        self._by_uid[performed.sop_instance_uid] = performed
        for key in dict.fromkeys(performed.lookup_keys()):
            uids = (*self._by_key.get(key, ()), performed.sop_instance_uid)
            self._by_key[key] = tuple(sorted(uids, key=lambda u: _arrival(self._by_uid[u])))

    def _remove(self, uid: str) -> None:
        old = self._by_uid.pop(uid, None)
        if old is None:
            return
        for key in old.lookup_keys():
            left = tuple(u for u in self._by_key.get(key, ()) if u != uid)
            if left:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)

    def with_performed(self, performed: Performed) -> PerformedSteps:
        """A new snapshot with one instance added or replaced (this one is unchanged)."""
        new = PerformedSteps()
        new._by_uid = dict(self._by_uid)
        new._by_key = dict(self._by_key)
        new._add(performed)
        return new

    def without(self, uids: Iterable[str]) -> PerformedSteps:
        """A new snapshot without these instances (archived; this one is unchanged).

        Examples
        --------
        >>> step = StepKey("1.2.4", "RP1", "SPS1", "")
        >>> steps = PerformedSteps([Performed("1.9.1", PpsStatus.COMPLETED, (step,))])
        >>> steps.without(["1.9.1"]).status(step) is None, steps.status(step).value
        (True, 'COMPLETED')
        """
        new = PerformedSteps()
        new._by_uid = dict(self._by_uid)
        new._by_key = dict(self._by_key)
        for uid in uids:
            new._remove(uid)
        return new

    def performing(self, step: StepKey) -> tuple[Performed, ...]:
        """The MPPS instances that perform a scheduled step, oldest first (by start date and
        time, then arrival): found by the step's Study Instance UID, else by its Accession
        Number, each with its Requested Procedure ID and Scheduled Procedure Step ID."""
        tail = (step.requested_procedure_id, step.scheduled_procedure_step_id)
        uids: tuple[str, ...] = ()
        if step.study_instance_uid:
            uids = self._by_key.get(("study", step.study_instance_uid, *tail), ())
        if not uids and step.accession_number:
            uids = self._by_key.get(("accession", step.accession_number, *tail), ())
        return tuple(self._by_uid[u] for u in uids)

    def status(self, step: StepKey) -> PpsStatus | None:
        """The performed status of a scheduled step: that of the newest MPPS instance
        performing it (a step discontinued, then performed again, is what the second MPPS
        says), or None when no MPPS names it."""
        performing = self.performing(step)
        return performing[-1].status if performing else None

    def get(self, uid: str) -> Performed | None:
        """One instance by its SOP Instance UID."""
        return self._by_uid.get(uid)

    def unscheduled(self) -> tuple[Performed, ...]:
        """The instances that name no scheduled step (reported, never linked)."""
        return tuple(p for p in self._by_uid.values() if p.unscheduled)

    def __len__(self) -> int:
        return len(self._by_uid)

    def __iter__(self) -> Iterator[Performed]:
        return iter(self._by_uid.values())
