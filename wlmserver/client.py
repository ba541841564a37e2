"""``wlmserver query``: a Modality Worklist client for people (``findscu -W``, friendlier).

It builds the C-FIND identifier from shortcuts (``--modality``, ``--station``, ``--date``,
``--patient-id``, ``--name``) and ``-k`` keys, sends it on a new association, and prints one
table row per answer (or DICOM JSON, PS3.18 F, with ``--json``; or DICOM files with
``--write DIR``).

``-k`` accepts ``Keyword=value`` or ``Keyword`` (a return key), by keyword or tag
(``(0010,0020)=P1``). Keys that live in the Scheduled Procedure Step item (PS3.4 Table K.6-1)
go there by themselves (``-k Modality=CT``); a path names any level explicitly
(``ScheduledProcedureStepSequence[0].Modality=CT``, ``(0040,0100)[0].(0008,0060)=CT``).

Exit status: 0 when the query ended with Success (whatever the number of answers), 1 when it
ended with a failure or cancel status, 2 for usage errors, 3 when no association was made.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import warnings
from collections.abc import Sequence
from contextlib import suppress
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from wlmserver.config import DEFAULT_AE_TITLE, DEFAULT_PORT
from wlmserver.keys import KEYS_BY_KEYWORD, Level

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

    from wlmserver.create import EntryError, entries_from_dump

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


def _nodelay(event: Any) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run_query(
    host: str, port: int, identifier: Dataset, called: str, calling: str, timeout: float
) -> tuple[int | None, str, list[Dataset]]:
    """Send the C-FIND; ``(final status or None if no association, comment, answers)``."""
    from pynetdicom import AE, evt

    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        return None, f"association with {called}@{host}:{port} {how}", []
    answers: list[Dataset] = []
    status: int | None = None
    comment = ""
    try:
        for response, answer in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
            if "Status" not in response:
                comment = "no response (timeout or aborted association)"
                status = 0xC000
                break
            code = int(response.Status)
            if code in _PENDING:
                if answer is not None:
                    answers.append(answer)
                continue
            status = code
            comment = str(response.get("ErrorComment", ""))
            offending = response.get("OffendingElement")
            if offending:
                tags = offending if isinstance(offending, list) else [offending]
                comment += " (offending: " + ", ".join(f"{int(t):08X}" for t in tags) + ")"
            break
    finally:
        if assoc.is_established:
            assoc.release()
    return status, comment.strip(), answers


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
    p.add_argument("host", nargs="?", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument(
        "port", nargs="?", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}"
    )
    p.add_argument("-aec", "--call", default=DEFAULT_AE_TITLE, help="called AE title")
    p.add_argument("-aet", "--aetitle", default="WLMQUERY", help="calling AE title")
    add_query_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the answers as DICOM JSON")
    out.add_argument("--write", type=Path, metavar="DIR", help="write each answer as a DICOM file")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver query``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # pydicom's "invalid value": the server will say
            warnings.simplefilter("ignore", UserWarning)
            identifier = build_identifier(args)
    except UsageError as exc:
        parser.error(str(exc))
    status, comment, answers = run_query(
        args.host, args.port, identifier, args.call, args.aetitle, args.timeout
    )
    if status is None:
        print(f"wlmserver query: {comment}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps([a.to_json_dict() for a in answers], indent=2, ensure_ascii=False))
    elif args.write:
        for path in write_files(answers, args.write):
            print(path)
    else:
        print(format_table(answers))
    word = "Success" if status == 0 else "Cancel" if status == 0xFE00 else "Failure"
    message = f"{len(answers)} answers; final status 0x{status:04X} ({word})"
    print(message + (f": {comment}" if comment else ""), file=sys.stderr)
    return 0 if status == 0 else 1
