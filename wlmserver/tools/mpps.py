"""``wlmserver mpps``: act as a modality's MPPS SCU, to test a set-up without a modality.

``wlmserver mpps start HOST PORT -aec WLM --accession A`` finds the worklist entry (by a
C-FIND to the same server, or read from ``--file x.wl``), builds the N-CREATE a modality
sends when the exam starts (PS3.4 F.7.2.1, every Type 1 and 2 attribute of Table F.7.2-1:
the Scheduled Step Attributes Sequence from the entry, status IN PROGRESS, start date and
time now) and prints the MPPS SOP Instance UID it created.
``wlmserver mpps complete HOST PORT -aec WLM UID`` (or ``discontinue``) sends the final N-SET
(PS3.4 F.7.2.2: status, end date and time now, one Performed Series Sequence item, which
the final state requires).

A refusal prints the status in hex with the SCP's ErrorComment (PS3.7 Annex C: 0x0111 the
instance exists, 0x0112 no such instance, 0x0110 with Error ID A710H the step may no longer
be updated, 0x0120 a required attribute missing ...).

Exit status: 0 when the SCP answered Success or a warning, 1 for a failure status or no
answer, 2 for usage errors (and no worklist entry to start), 3 when no association was made.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from wlmserver.config import DEFAULT_AE_TITLE
from wlmserver.matching.mpps import MPPS_SOP_CLASS, MppsStatus, PpsStatus, is_valid_uid
from wlmserver.tools.client import (
    SPS,
    UsageError,
    _Watch,
    address,
    association_problem,
    check_ae_title,
    run_query,
    set_key,
)

#: What an N-CREATE needs of the worklist entry (PS3.4 Table F.7.2-1 against Table K.6-1).
ENTRY_KEYS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "AccessionNumber",
    "StudyInstanceUID",
    "ReferencedStudySequence",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
)
SPS_KEYS = (
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    "Modality",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
)
#: PS3.7 Annex C warning statuses of N-CREATE and N-SET.
WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


class ToolError(Exception):
    """What went wrong, and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _get(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)  # by keyword: the value
    if value is None:
        return [] if keyword.endswith("Sequence") else ""
    return value


def _first_text(value: Any) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return str(value[0]) if len(value) else ""
    return str(value)


def create_request(
    entry: Dataset,
    station: str,
    now: datetime,
    pps_id: str | None = None,
    modality: str | None = None,
) -> Dataset:
    """The N-CREATE attribute list a modality sends when it starts the entry's step.

    Parameters
    ----------
    entry : Dataset
        A worklist entry with one item in its Scheduled Procedure Step Sequence.
    station : str
        Performed Station AE Title (our calling AE title).
    now : datetime
        The start date and time.
    pps_id : str or None
        Performed Procedure Step ID (default: ``PPS`` and the start time).
    modality : str or None
        The modality, when the entry has none (it is Type 1 in the N-CREATE).

    Raises
    ------
    UsageError
        No modality at all.

    Examples
    --------
    >>> entry = Dataset(); entry.StudyInstanceUID = "1.2.3"; entry.AccessionNumber = "A1"
    >>> sps = Dataset(); sps.Modality = "CT"; sps.ScheduledProcedureStepID = "S1"
    >>> entry.ScheduledProcedureStepSequence = [sps]
    >>> ds = create_request(entry, "CT01", datetime(2026, 11, 22, 10, 15))
    >>> item = ds.ScheduledStepAttributesSequence[0]
    >>> item.StudyInstanceUID, item.ScheduledProcedureStepID, ds.PerformedProcedureStepStatus
    ('1.2.3', 'S1', 'IN PROGRESS')
    >>> ds.PerformedProcedureStepID, ds.PerformedProcedureStepStartTime
    ('PPS261122101500', '101500')
    """
    sps_items = _get(entry, SPS)
    sps = sps_items[0] if sps_items else Dataset()
    chosen = modality or _first_text(_get(sps, "Modality")).strip()
    if not chosen:
        raise UsageError("the worklist entry has no Modality: give --modality")
    step = Dataset()
    step.StudyInstanceUID = _get(entry, "StudyInstanceUID")
    step.ReferencedStudySequence = _get(entry, "ReferencedStudySequence")
    step.AccessionNumber = _get(entry, "AccessionNumber")
    step.RequestedProcedureID = _get(entry, "RequestedProcedureID")
    step.RequestedProcedureDescription = _get(entry, "RequestedProcedureDescription")
    step.ScheduledProcedureStepID = _get(sps, "ScheduledProcedureStepID")
    step.ScheduledProcedureStepDescription = _get(sps, "ScheduledProcedureStepDescription")
    step.ScheduledProtocolCodeSequence = _get(sps, "ScheduledProtocolCodeSequence")
    ds = Dataset()
    charset = entry.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset
    ds.ScheduledStepAttributesSequence = [step]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, _get(entry, keyword))
    ds.ReferencedPatientSequence = _get(entry, "ReferencedPatientSequence")
    ds.PerformedProcedureStepID = pps_id or f"PPS{now:%y%m%d%H%M%S}"
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = _first_text(_get(sps, "ScheduledStationName"))
    ds.PerformedLocation = _first_text(_get(sps, "ScheduledProcedureStepLocation"))
    ds.PerformedProcedureStepStartDate = f"{now:%Y%m%d}"
    ds.PerformedProcedureStepStartTime = f"{now:%H%M%S}"
    ds.PerformedProcedureStepStatus = PpsStatus.IN_PROGRESS.value
    ds.PerformedProcedureStepDescription = _get(sps, "ScheduledProcedureStepDescription")
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = _get(entry, "RequestedProcedureCodeSequence")
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = chosen
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = _get(sps, "ScheduledProtocolCodeSequence")
    ds.PerformedSeriesSequence = []
    return ds


def final_request(
    status: PpsStatus, now: datetime, protocol: str = "WLMSERVER TEST", series_uid: str = ""
) -> Dataset:
    """The final N-SET modification list: status, end date and time, and one Performed
    Series Sequence item (the final state needs one, PS3.4 Table F.7.2-1 Note 2).

    Examples
    --------
    >>> ds = final_request(PpsStatus.COMPLETED, datetime(2026, 11, 22, 10, 30), series_uid="1.2")
    >>> ds.PerformedProcedureStepStatus, ds.PerformedProcedureStepEndTime
    ('COMPLETED', '103000')
    >>> ds.PerformedSeriesSequence[0].ProtocolName
    'WLMSERVER TEST'
    """
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status.value
    ds.PerformedProcedureStepEndDate = f"{now:%Y%m%d}"
    ds.PerformedProcedureStepEndTime = f"{now:%H%M%S}"
    series = Dataset()
    series.PerformingPhysicianName = ""
    series.ProtocolName = protocol
    series.OperatorsName = ""
    series.SeriesInstanceUID = series_uid or str(generate_uid())
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = []
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def entries_from_file(path: Path) -> list[Dataset]:
    """The entries of a worklist file: one per Scheduled Procedure Step item."""
    try:
        ds = dcmread(path)
    except (OSError, InvalidDicomError, ValueError) as exc:
        raise UsageError(f"--file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    entries = []
    for item in _get(ds, SPS):
        entry = Dataset()
        entry.update(ds)  # the data set, without the file meta information
        entry.ScheduledProcedureStepSequence = [item]
        entries.append(entry)
    if not entries:
        raise UsageError(f"--file {path}: no Scheduled Procedure Step Sequence item")
    return entries


def entries_from_query(args: argparse.Namespace, host: str, port: int) -> list[Dataset]:
    """The worklist entries the server answers for ``--accession`` / ``--patient-id``."""
    identifier = Dataset()
    for keyword in (*ENTRY_KEYS, *(f"{SPS}[0].{k}" for k in SPS_KEYS)):
        if keyword != "SpecificCharacterSet":
            set_key(identifier, keyword)
    if args.accession is not None:
        set_key(identifier, f"AccessionNumber={args.accession}")
    if args.patient_id is not None:
        set_key(identifier, f"PatientID={args.patient_id}")
    result = run_query(host, port, identifier, args.call, args.aetitle, args.timeout)
    if not result.associated:
        raise ToolError(result.comment, 3)
    if result.status != 0:
        code = "none" if result.status is None else f"0x{result.status:04X}"
        raise ToolError(f"the worklist query failed: status {code} {result.comment}", 1)
    return result.answers


def describe_entry(entry: Dataset) -> str:
    """One line naming an entry by its procedure identifiers (no patient data)."""
    sps = _get(entry, SPS)
    item = sps[0] if sps else Dataset()
    return (
        f"accession {_get(entry, 'AccessionNumber') or '-'}, "
        f"RP {_get(entry, 'RequestedProcedureID') or '-'}, "
        f"SPS {_get(item, 'ScheduledProcedureStepID') or '-'} "
        f"({_get(item, 'ScheduledProcedureStepDescription') or '-'})"
    )


def choose(entries: Sequence[Dataset], item: int | None) -> Dataset:
    """The entry to start: the only one, or ``--item N`` (1-based) of several."""
    if not entries:
        raise UsageError("no worklist entry matches")
    if item is None:
        if len(entries) == 1:
            return entries[0]
        listed = "; ".join(f"{n}: {describe_entry(e)}" for n, e in enumerate(entries, 1))
        raise UsageError(
            f"{len(entries)} worklist entries match, choose one with --item N: {listed}"
        )
    if not 1 <= item <= len(entries):
        raise UsageError(f"--item {item}: there are {len(entries)} entries")
    return entries[item - 1]


def send(args: argparse.Namespace, host: str, port: int, kind: str, ds: Dataset, uid: str) -> str:
    """Send one N-CREATE or N-SET; the status in words (raises :class:`ToolError` unless
    it is Success or a warning)."""
    from pynetdicom import AE, evt
    from pynetdicom.events import EventHandlerType

    ae = AE(ae_title=args.aetitle)
    ae.add_requested_context(MPPS_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = min(args.timeout, 10.0)
    watch = _Watch()
    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, watch.opened_),
        (evt.EVT_CONN_CLOSE, watch.closed_),
        (evt.EVT_PDU_RECV, watch.received_),
    ]
    try:
        assoc = ae.associate(host, port, ae_title=args.call, evt_handlers=handlers)
    except OSError as exc:
        raise ToolError(f"cannot find the host {host!r} ({exc.strerror or exc})", 3) from None
    if not assoc.is_established:
        why = association_problem(
            assoc, watch, host, port, args.timeout, args.aetitle, args.call, "MPPS (N-CREATE)"
        )
        raise ToolError(why, 3)
    try:
        if kind == "N-CREATE":
            status, _ = assoc.send_n_create(ds, MPPS_SOP_CLASS, uid)
        else:
            status, _ = assoc.send_n_set(ds, MPPS_SOP_CLASS, uid)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        raise ToolError(f"{kind}: {watch.why_stopped(args.timeout)}", 1)
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "") or "").strip()
    text = f"status 0x{code:04X}"
    if "ErrorID" in status:
        text += f", Error ID {int(status.ErrorID):04X}H"
    if comment:
        text += f": {comment}"
    if code == MppsStatus.SUCCESS:
        return "Success"
    if code in WARNINGS:
        return f"Warning, {text}"
    raise ToolError(f"{kind} refused, {text}", 1)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver mpps``."""
    p = argparse.ArgumentParser(
        prog="wlmserver mpps",
        description="Send MPPS N-CREATE / N-SET as a modality would: 'start' a worklist entry "
        "(prints the MPPS SOP Instance UID), then 'complete' or 'discontinue' it.",
        allow_abbrev=False,
    )
    p.add_argument("action", choices=("start", "complete", "discontinue"))
    p.add_argument(
        "words",
        nargs="*",
        metavar="HOST PORT UID",
        help="the server (default 127.0.0.1 11112; a lone number is the port); for complete "
        "and discontinue, last, the MPPS SOP Instance UID 'start' printed",
    )
    p.add_argument("-aec", "--call", default=DEFAULT_AE_TITLE, help="called AE title")
    p.add_argument(
        "-aet",
        "--aetitle",
        default="WLMMPPS",
        help="calling AE title, also the Performed Station AE Title (default WLMMPPS)",
    )
    which = p.add_argument_group("start: the worklist entry (one of)")
    which.add_argument("--accession", help="query the server for this AccessionNumber")
    which.add_argument("--patient-id", help="query the server for this PatientID")
    which.add_argument("--file", type=Path, help="read the entry from this .wl file")
    which.add_argument("--item", type=int, metavar="N", help="the Nth of several entries")
    p.add_argument("--modality", help="start: the Modality, when the entry has none")
    p.add_argument("--pps-id", help="start: Performed Procedure Step ID (default PPS+time)")
    p.add_argument("--mpps-uid", help="start: the SOP Instance UID to create (default: new)")
    p.add_argument(
        "--protocol",
        default="WLMSERVER TEST",
        help="complete/discontinue: ProtocolName of the Performed Series item",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def _positionals(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """``HOST PORT`` (either may be left out, as for ``wlmserver query``), and for complete
    and discontinue the UID, which is always the last word."""
    words = list(args.words)
    uid = None
    if args.action != "start":
        if not words:
            raise UsageError(f"{args.action} needs the MPPS SOP Instance UID (from 'start')")
        uid = words.pop()
        if not is_valid_uid(uid) or "." not in uid:  # a lone number is a port, not a UID
            raise UsageError(f"{uid!r}: not a valid SOP Instance UID (it comes last)")
    if len(words) > 2:
        raise UsageError(f"{words[2]!r}: too many arguments (HOST PORT, then the UID)")
    return (words[0] if words else None), (words[1] if len(words) > 1 else None), uid


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver mpps``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # the UID may come after the options
    try:
        host_word, port_word, uid = _positionals(args)
        host, port = address(host_word, port_word)
        check_ae_title(args.call, "-aec")
        check_ae_title(args.aetitle, "-aet")
        now = datetime.now()
        if args.action == "start":
            given = [o for o in ("accession", "patient_id", "file") if getattr(args, o) is not None]
            if len(given) != 1:
                raise UsageError("start needs one of --accession, --patient-id or --file")
            if args.mpps_uid is not None and not is_valid_uid(args.mpps_uid):
                raise UsageError(f"--mpps-uid {args.mpps_uid!r}: not a valid UID")
            entries = (
                entries_from_file(args.file)
                if args.file is not None
                else entries_from_query(args, host, port)
            )
            entry = choose(entries, args.item)
            with warnings.catch_warnings():  # pydicom's "invalid value": the SCP will say
                warnings.simplefilter("ignore", UserWarning)
                request = create_request(entry, args.aetitle, now, args.pps_id, args.modality)
            uid = args.mpps_uid or str(generate_uid())
            said = send(args, host, port, "N-CREATE", request, uid)
            print(uid)
            print(
                f"N-CREATE {uid} IN PROGRESS for {describe_entry(entry)}: {said}", file=sys.stderr
            )
            return 0
        assert uid is not None
        status = PpsStatus.COMPLETED if args.action == "complete" else PpsStatus.DISCONTINUED
        said = send(args, host, port, "N-SET", final_request(status, now, args.protocol), uid)
        print(f"N-SET {uid} {status.value}: {said}", file=sys.stderr)
        return 0
    except UsageError as exc:
        parser.error(str(exc))
    except ToolError as exc:
        print(f"wlmserver mpps: {exc}", file=sys.stderr)
        return exc.status
