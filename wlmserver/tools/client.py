"""``wlmserver query``: a Modality Worklist client for people (``findscu -W``, friendlier).

It builds the C-FIND identifier from shortcuts (``--modality``, ``--station``, ``--date``,
``--patient-id``, ``--name``) and ``-k`` keys, sends it on a new association, and prints one
table row per answer (or DICOM JSON, PS3.18 F, with ``--json``; or DICOM files with
``--write DIR``).

``-k`` accepts ``Keyword=value`` or ``Keyword`` (a return key), by keyword or tag
(``(0010,0020)=P1``). Keys that live in the Scheduled Procedure Step item (PS3.4 Table K.6-1)
go there by themselves (``-k Modality=CT``); a path names any level explicitly
(``ScheduledProcedureStepSequence[0].Modality=CT``, ``(0040,0100)[0].(0008,0060)=CT``).

``HOST PORT`` says where the server is; both may be left out (127.0.0.1, 11112), and a single
number is the port (``wlmserver query 11600`` asks 127.0.0.1 port 11600), since a host is never
just a number.

When no association is made it says why: the connection was refused (no server on that port),
the host is not known, nothing answered in time, or the server rejected the association (with
the reason it gave, as ``findscu`` prints it: "Called AE Title Not Recognized" ...). When the
server aborts the association or stops answering during the query, it says which.

Exit status: 0 when the query ended with Success (whatever the number of answers), 1 when it
ended with a failure or cancel status, or without a final status, 2 for usage errors, 3 when
no association was made.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from wlmserver.config import DEFAULT_AE_TITLE, DEFAULT_PORT
from wlmserver.matching.keys import KEYS_BY_KEYWORD, Level

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
SPS = "ScheduledProcedureStepSequence"

#: Return keys asked when no -k names one: what a modality shows in its worklist.
DEFAULT_TOP = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
DEFAULT_SPS = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepStatus",  # the performed status, where the server links MPPS
)
#: Table columns: (heading, path); a path with a dot is in the SPS item.
COLUMNS = (
    ("Date", f"{SPS}.ScheduledProcedureStepStartDate"),
    ("Time", f"{SPS}.ScheduledProcedureStepStartTime"),
    ("Mod", f"{SPS}.Modality"),
    ("Station", f"{SPS}.ScheduledStationAETitle"),
    ("PatientName", "PatientName"),
    ("PatientID", "PatientID"),
    ("Accession", "AccessionNumber"),
    ("Step", f"{SPS}.ScheduledProcedureStepDescription"),
    ("Status", f"{SPS}.ScheduledProcedureStepStatus"),
)

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_PENDING = (0xFF00, 0xFF01)


class UsageError(ValueError):
    """A key or shortcut that cannot become part of an identifier."""


def _keyword(name: str) -> str:
    """A keyword for ``Keyword`` or ``(gggg,eeee)``."""
    match = _TAG.match(name.strip())
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise UsageError(f"{name}: not an attribute this client knows by tag")
        return keyword
    if tag_for_keyword(name.strip()) is None:
        raise UsageError(f"{name}: not a DICOM keyword")
    return name.strip()


def set_key(identifier: Dataset, spec: str) -> None:
    """Add one ``-k`` key (``path[=value]``) to an identifier.

    Examples
    --------
    >>> ds = Dataset()
    >>> set_key(ds, "PatientID=P1"); set_key(ds, "Modality=CT"); set_key(ds, "(0010,0010)")
    >>> ds.PatientID, ds.ScheduledProcedureStepSequence[0].Modality, ds.PatientName
    ('P1', 'CT', '')
    """
    path, _, value = spec.partition("=")
    parts = [p for p in path.split(".") if p]
    if not parts:
        raise UsageError(f"-k {spec!r}: no attribute")
    target = identifier
    if len(parts) == 1:
        keyword = _keyword(parts[0])
        row = KEYS_BY_KEYWORD.get(keyword)
        if row is not None and row.level is Level.SPS:
            parts = [f"{SPS}[0]", keyword]
    for part in parts[:-1]:
        match = re.match(r"^(.*?)\[(\d+)\]$", part)
        name, index = (match.group(1), int(match.group(2))) if match else (part, 0)
        keyword = _keyword(name)
        if dictionary_VR(keyword) != "SQ":
            raise UsageError(f"-k {spec!r}: {keyword} is not a sequence")
        items = list(getattr(target, keyword, None) or [])
        while len(items) <= index:
            items.append(Dataset())
        setattr(target, keyword, items)
        target = items[index]
    keyword = _keyword(parts[-1])
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        if value:
            raise UsageError(f"-k {spec!r}: a sequence takes no value (name its attributes)")
        if keyword not in target:
            setattr(target, keyword, [Dataset()])
        return
    setattr(target, keyword, value)


def date_range(text: str, today: date | None = None) -> str:
    """``today``, ``tomorrow``, ``yesterday``, ``YYYYMMDD`` or a range of them, as a DA query.

    Examples
    --------
    >>> date_range("today", date(2026, 11, 22)), date_range("today-tomorrow", date(2026, 11, 22))
    ('20261122', '20261122-20261123')
    >>> date_range("20261101-", date(2026, 11, 22))
    '20261101-'
    """
    today = today or date.today()
    words = {
        "today": today,
        "tomorrow": today + timedelta(days=1),
        "yesterday": today - timedelta(days=1),
    }

    def one(part: str) -> str:
        part = part.strip().lower()
        if not part:
            return ""
        if part in words:
            return words[part].strftime("%Y%m%d")
        if re.fullmatch(r"\d{8}", part):
            date(int(part[:4]), int(part[4:6]), int(part[6:]))  # raises if not a date
            return part
        raise UsageError(f"--date {text!r}: use today, tomorrow, yesterday or YYYYMMDD")

    try:
        if "-" in text:
            lo, _, hi = text.partition("-")
            return f"{one(lo)}-{one(hi)}"
        return one(text)
    except UsageError:
        raise
    except ValueError as exc:  # eight digits that are not a date
        raise UsageError(f"--date {text!r}: {exc}") from None


def load_request(path: Path) -> Dataset:
    """An identifier from a captured request: a DICOM file or ``dcmdump`` text.

    Raises
    ------
    UsageError
        The file is neither.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from wlmserver.store.orders import EntryError, entries_from_dump

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--request {path}: {exc.strerror or exc}") from None
    if data[128:132] == b"DICM":
        try:
            stored = dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise UsageError(f"--request {path}: {exc}") from None
        return Dataset(stored)  # the data set, without the file meta information
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        (parsed,) = entries_from_dump(text)
    except EntryError as exc:
        raise UsageError(f"--request {path}: {exc}") from None
    return parsed


def build_identifier(args: argparse.Namespace) -> Dataset:
    """The C-FIND identifier of the command line."""
    keys: list[str] = list(args.key or [])
    request = getattr(args, "request", None)
    identifier = load_request(request) if request is not None else Dataset()
    if request is None and (args.all_keys or not any("=" not in k for k in keys)):
        keys = [*DEFAULT_TOP, *DEFAULT_SPS, *keys]  # no return key of its own
    shortcuts = {
        "Modality": args.modality,
        "ScheduledStationAETitle": args.station,
        "ScheduledProcedureStepStartDate": date_range(args.date) if args.date else None,
        "PatientID": args.patient_id,
        "PatientName": args.name,
        "AccessionNumber": args.accession,
    }
    for spec in keys:
        set_key(identifier, spec)
    for keyword, value in shortcuts.items():
        if value is not None:
            set_key(identifier, f"{keyword}={value}")
    if SPS not in identifier:
        identifier.ScheduledProcedureStepSequence = [Dataset()]
    return identifier


def _value(ds: Dataset, path: str) -> str:
    target: Any = ds
    *parents, last = path.split(".")
    for parent in parents:
        items = getattr(target, parent, None)
        if not items:
            return ""
        target = items[0]
    value = getattr(target, last, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value) if value is not None else ""


def format_table(answers: Sequence[Dataset]) -> str:
    """One row per answer, columns sized to their contents."""
    rows = [[heading for heading, _ in COLUMNS]]
    rows += [[_value(ds, path) for _, path in COLUMNS] for ds in answers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


#: A-ASSOCIATE-RJ parameters (PS3.8 9.3.4), in the words ``findscu`` prints them.
REJECT_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
REJECT_SOURCES = {
    1: "Service User",
    2: "Service Provider (ACSE Related)",
    3: "Service Provider (Presentation Related)",
}
REJECT_REASONS = {
    (1, 1): "No Reason Given",
    (1, 2): "Application Context Name Not Supported",
    (1, 3): "Calling AE Title Not Recognized",
    (1, 7): "Called AE Title Not Recognized",
    (2, 1): "No Reason Given",
    (2, 2): "Protocol Version Not Supported",
    (3, 1): "Temporary Congestion",
    (3, 2): "Local Limit Exceeded",
}
#: A-ABORT parameters (PS3.8 9.3.8): the source, and the reason a service provider gives.
ABORT_SOURCES = {0: "Service User", 1: "Reserved", 2: "Service Provider"}
ABORT_REASONS = {
    0: "Reason Not Specified",
    1: "Unrecognized PDU",
    2: "Unexpected PDU",
    4: "Unrecognized PDU Parameter",
    5: "Unexpected PDU Parameter",
    6: "Invalid PDU Parameter Value",
}


def reject_reason(result: int, source: int, diagnostic: int) -> str:
    """An A-ASSOCIATE-RJ as ``findscu`` reports it: reason, then result and source.

    Examples
    --------
    >>> reject_reason(1, 1, 7)
    'Called AE Title Not Recognized (Result: Rejected Permanent, Source: Service User)'
    >>> reject_reason(2, 3, 9)
    'reason 9 (Result: Rejected Transient, Source: Service Provider (Presentation Related))'
    """
    reason = REJECT_REASONS.get((source, diagnostic), f"reason {diagnostic}")
    result_text = REJECT_RESULTS.get(result, f"result {result}")
    source_text = REJECT_SOURCES.get(source, f"source {source}")
    return f"{reason} (Result: {result_text}, Source: {source_text})"


def abort_reason(source: int, reason: int) -> str:
    """An A-ABORT's source and reason, in words.

    Examples
    --------
    >>> abort_reason(2, 2), abort_reason(0, 0)
    ('Source: Service Provider, Reason: Unexpected PDU', 'Source: Service User')
    """
    text = f"Source: {ABORT_SOURCES.get(source, f'source {source}')}"
    if source == 2:  # only a service provider gives a reason (PS3.8 9.3.8)
        text += f", Reason: {ABORT_REASONS.get(reason, f'reason {reason}')}"
    return text


@dataclass
class QueryResult:
    """What a query came to.

    Attributes
    ----------
    associated : bool
        Whether an association was made.
    status : int or None
        The final C-FIND status; None when there was none (no association, an abort, a
        timeout).
    comment : str
        The final response's error comment, or why there is no association or final status.
    answers : list of Dataset
        The pending responses' identifiers.
    """

    associated: bool
    status: int | None = None
    comment: str = ""
    answers: list[Dataset] = field(default_factory=list)


class _Watch:
    """What happened on the connection: for saying why an association or a query failed."""

    def __init__(self) -> None:
        self.opened = False
        self.closed = False
        self.abort: tuple[int, int] | None = None  # an A-ABORT received: (source, reason)
        self.last_received = time.monotonic()

    def opened_(self, event: Any) -> None:
        self.opened = True
        self.last_received = time.monotonic()
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def closed_(self, event: Any) -> None:
        self.closed = True

    def received_(self, event: Any) -> None:
        from pynetdicom.pdu import A_ABORT_RQ

        self.last_received = time.monotonic()
        pdu = event.pdu
        if isinstance(pdu, A_ABORT_RQ):
            self.abort = (int(pdu.source or 0), int(pdu.reason_diagnostic or 0))

    def why_stopped(self, timeout: float) -> str:
        """Why an established association ended without a final status."""
        if self.abort is not None:
            return f"the server aborted the association ({abort_reason(*self.abort)})"
        if time.monotonic() - self.last_received >= timeout * 0.95:
            return f"no response within {timeout:g} s (--timeout); the association was aborted"
        return "the connection was closed without a final response"


def _host_problem(host: str, exc: OSError) -> str:
    return (
        f"cannot find the host {host!r} ({exc.strerror or exc}); "
        "the called AE title goes with -aec, the host and port come last"
    )


def check_ae_title(value: str, option: str) -> str:
    """An AE title as given, or :class:`UsageError` saying what an AE title may be.

    Examples
    --------
    >>> check_ae_title("WLM", "-aec")
    'WLM'
    >>> check_ae_title("A" * 17, "-aet")
    Traceback (most recent call last):
    ...
    wlmserver.tools.client.UsageError: -aet 'AAAAAAAAAAAAAAAAA': an AE title is 1 to 16 ...
    """
    if not value.strip() or len(value) > 16 or "\\" in value or not value.isprintable():
        raise UsageError(
            f"{option} {value!r}: an AE title is 1 to 16 characters, "
            "without backslashes or control characters"
        )
    return value


def connect_problem(host: str, port: int, timeout: float) -> str:
    """Why no connection to ``host:port`` can be made, found by trying one (pynetdicom only
    logs why its own attempt failed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused: is a server running on {host}:{port}?"
    except socket.gaierror as exc:
        return _host_problem(host, exc)
    except TimeoutError:
        return (
            f"no answer from {host}:{port} within {timeout:g} s: is the host up, and the port "
            "open in its firewall?"
        )
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return f"the connection to {host}:{port} failed (it succeeds now: try again)"


def association_problem(
    assoc: Any,
    watch: _Watch,
    host: str,
    port: int,
    timeout: float,
    calling: str,
    called: str,
    service: str = "Modality Worklist queries",
) -> str:
    """Why an association was not established, as far as it is known (``service``: what
    was asked for, in the message for an association without a presentation context)."""
    where = f"{host}:{port}"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result, source, diagnostic = (
            int(getattr(rsp, name, 0) or 0) for name in ("result", "result_source", "diagnostic")
        )
        text = f"association rejected by {where}: {reject_reason(result, source, diagnostic)}"
        if (source, diagnostic) == (1, 7):
            text += f"; the server serves no AE title {called!r} (-aec)"
        elif (source, diagnostic) == (1, 3):
            text += f"; the server does not accept the calling AE title {calling!r} (-aet)"
        elif result == 2:
            text += "; try again later"
        return text
    if not watch.opened:
        return connect_problem(host, port, min(timeout, 10.0))
    if watch.abort is not None:
        return f"association aborted by {where} ({abort_reason(*watch.abort)})"
    rsp = assoc.acceptor.primitive
    if rsp is not None and getattr(rsp, "result", None) == 0:
        return (
            f"{where} accepted the association but not {service} "
            "(no presentation context for its SOP class): is it a "
            + ("worklist server?" if "Worklist" in service else "server for them?")
        )
    if time.monotonic() - watch.last_received >= timeout * 0.95:
        return f"no answer to the association request from {where} within {timeout:g} s (--timeout)"
    return f"{where} closed the connection without answering the association request"


def run_query(
    host: str, port: int, identifier: Dataset, called: str, calling: str, timeout: float
) -> QueryResult:
    """Send the C-FIND; what it came to (see :class:`QueryResult`)."""
    from pynetdicom import AE, evt
    from pynetdicom.events import EventHandlerType

    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    watch = _Watch()
    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, watch.opened_),
        (evt.EVT_CONN_CLOSE, watch.closed_),
        (evt.EVT_PDU_RECV, watch.received_),
    ]
    try:
        assoc = ae.associate(host, port, ae_title=called, evt_handlers=handlers)
    except OSError as exc:  # pynetdicom resolves the host before it connects
        return QueryResult(False, comment=_host_problem(host, exc))
    if not assoc.is_established:
        why = association_problem(assoc, watch, host, port, timeout, calling, called)
        return QueryResult(False, comment=why)
    result = QueryResult(True)
    try:
        for response, answer in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
            if "Status" not in response:
                result.comment = watch.why_stopped(timeout)
                break
            code = int(response.Status)
            if code in _PENDING:
                if answer is not None:
                    result.answers.append(answer)
                continue
            result.status = code
            comment = str(response.get("ErrorComment", ""))
            offending = response.get("OffendingElement")
            if offending:
                tags = offending if isinstance(offending, list) else [offending]
                comment += " (offending: " + ", ".join(f"{int(t):08X}" for t in tags) + ")"
            result.comment = comment.strip()
            break
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def write_files(answers: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each answer as a DICOM file ``rsp0001.dcm``, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, answer in enumerate(answers, start=1):
        answer.file_meta = FileMetaDataset()
        answer.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
        answer.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        answer.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"rsp{n:04d}.dcm"
        answer.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def add_query_options(p: argparse.ArgumentParser) -> None:
    """The options that make the identifier (shared with ``wlmserver explain``)."""
    p.add_argument(
        "-k", "--key", action="append", metavar="PATH[=VALUE]", help="a key (repeatable)"
    )
    p.add_argument(
        "--all-keys", action="store_true", help="the default return keys besides -k keys"
    )
    p.add_argument(
        "--request",
        type=Path,
        metavar="FILE",
        help="start from a captured request (DICOM or dcmdump text; -k keys apply on top)",
    )
    p.add_argument("--modality", help="Modality (in the SPS item)")
    p.add_argument("--station", help="ScheduledStationAETitle")
    p.add_argument("--date", help="SPS start date: today, tomorrow, yesterday, YYYYMMDD, or A-B")
    p.add_argument("--patient-id", help="PatientID")
    p.add_argument("--name", help="PatientName (wildcards * and ? allowed)")
    p.add_argument("--accession", help="AccessionNumber")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver query``."""
    p = argparse.ArgumentParser(
        prog="wlmserver query",
        description="Query a Modality Worklist SCP and print the answers as a table.",
        allow_abbrev=False,
    )
    p.add_argument("host", nargs="?", help="default 127.0.0.1 (a lone number is the port)")
    p.add_argument("port", nargs="?", help=f"default {DEFAULT_PORT}")
    p.add_argument("-aec", "--call", default=DEFAULT_AE_TITLE, help="called AE title")
    p.add_argument("-aet", "--aetitle", default="WLMQUERY", help="calling AE title")
    add_query_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the answers as DICOM JSON")
    out.add_argument("--write", type=Path, metavar="DIR", help="write each answer as a DICOM file")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def address(host: str | None, port: str | None) -> tuple[str, int]:
    """The server's host and port from the positional arguments; a lone number is the port.

    Raises
    ------
    UsageError
        A port that is not a number from 1 to 65535, or a host that is just a number.

    Examples
    --------
    >>> address(None, None), address("11600", None), address("pacs", "104")
    (('127.0.0.1', 11112), ('127.0.0.1', 11600), ('pacs', 104))
    """
    if host is not None and port is None and host.isdigit():
        host, port = None, host  # a host is never just a number: this is the port
    if host is not None and host.isdigit():
        raise UsageError(f"{host!r} is not a host: give the host first, then the port")
    number = DEFAULT_PORT
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"port {port!r}: not a number from 1 to 65535 (HOST PORT)")
        number = int(port)
    return host or "127.0.0.1", number


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver query``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = address(args.host, args.port)
        check_ae_title(args.call, "-aec")
        check_ae_title(args.aetitle, "-aet")
        with warnings.catch_warnings():  # pydicom's "invalid value": the server will say
            warnings.simplefilter("ignore", UserWarning)
            identifier = build_identifier(args)
    except UsageError as exc:
        parser.error(str(exc))
    result = run_query(host, port, identifier, args.call, args.aetitle, args.timeout)
    if not result.associated:
        print(f"wlmserver query: {result.comment}", file=sys.stderr)
        return 3
    status, comment, answers = result.status, result.comment, result.answers
    if args.json:
        print(json.dumps([a.to_json_dict() for a in answers], indent=2, ensure_ascii=False))
    elif args.write:
        for path in write_files(answers, args.write):
            print(path)
    else:
        print(format_table(answers))
    if status is None:
        print(f"{len(answers)} answers; no final status: {comment}", file=sys.stderr)
        return 1
    word = "Success" if status == 0 else "Cancel" if status == 0xFE00 else "Failure"
    message = f"{len(answers)} answers; final status 0x{status:04X} ({word})"
    print(message + (f": {comment}" if comment else ""), file=sys.stderr)
    return 0 if status == 0 else 1
