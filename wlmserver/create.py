"""``wlmserver create``: worklist files from what a RIS can emit (JSON, CSV, dcmdump text).

Input forms (``--format auto`` tells them apart):

``json``
    A JSON object, or a list of them, one worklist entry (one file) each. Either the DICOM
    JSON model (PS3.18 F: ``{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "..."}]}}``)
    or a flat form with keywords as keys: ``{"PatientName": "DOE^JANE", "PatientID": "P1",
    ..., "Modality": "CT", ...}``, where SPS keys at the top make one scheduled procedure step,
    or ``"ScheduledProcedureStepSequence": [{...}, {...}]`` lists several. Lists give
    multiple values (``"ScheduledStationAETitle": ["CT01", "CT02"]``).
``csv``
    A header row of keywords, then one row per entry with one scheduled procedure step; empty
    cells are left out; ``\\`` separates multiple values.
``dump``
    ``dcmdump`` / ``dump2dcm`` text: ``(0010,0010) PN [DOE^JANE]`` lines, sequences with
    ``(fffe,e000)`` item and ``(fffe,e00d)`` / ``(fffe,e0dd)`` delimiter lines.

What the standard requires and a RIS rarely knows is filled in: StudyInstanceUID (derived from
the accession number, requested procedure ID and patient ID, so the same order always gets the
same UID), RequestedProcedureID (the accession number), ScheduledProcedureStepID (the requested
procedure ID and the step's number), and Specific Character Set (ISO_IR 192 when any text is
not ASCII). An entry that still lacks a Type 1 attribute (PS3.4 Table K.6-1), or has a value
that is not valid for its VR, is refused with a message naming each attribute.

Each file is written to a temporary name in the AE folder, read back exactly as the server
reads it, and only then renamed to ``<AccessionNumber>_<RequestedProcedureID>.wl`` (so writing
the same order again replaces its file). Exit status: 0 when every entry was written, 1 when
any was refused (the others are still written), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import validate_value

from wlmserver.keys import KEYS_BY_KEYWORD, REQUIRED_SPS, REQUIRED_TOP, Level
from wlmserver.response import can_encode

SPS = "ScheduledProcedureStepSequence"
#: dump2dcm's Media Storage SOP Class of worklist files.
WORKLIST_FILE_CLASS = "1.2.276.0.7230010.3.1.0.1"
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")
_CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})


class EntryError(ValueError):
    """An input entry that cannot become a worklist file; lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# ------------------------------------------------------------------------------ reading input
def _keyword_of(name: str) -> str:
    match = _TAG.match(name.strip())
    if match:
        keyword = keyword_for_tag(int(match.group(1) + match.group(2), 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(name.strip()) is not None:
        return name.strip()
    raise EntryError([f"{name}: not a DICOM keyword or tag"])


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        ds_items = []
        for item in items:
            if not isinstance(item, dict):
                raise EntryError([f"{keyword}: items must be objects"])
            ds_items.append(from_flat(item, sps_at_top=False))
        setattr(ds, keyword, ds_items)
        return
    if isinstance(value, list):
        value = [str(v) for v in value]
    elif value is None:
        value = ""
    else:
        value = str(value)
    setattr(ds, keyword, value)


def from_flat(obj: dict[str, Any], *, sps_at_top: bool = True) -> Dataset:
    """A dataset from the flat form (keywords as keys); SPS keys at the top make one step."""
    ds = Dataset()
    step = Dataset()
    problems = []
    for name, value in obj.items():
        try:
            keyword = _keyword_of(name)
            row = KEYS_BY_KEYWORD.get(keyword)
            target = step if sps_at_top and row is not None and row.level is Level.SPS else ds
            _set(target, keyword, value)
        except EntryError as exc:
            problems.extend(exc.problems)
    if problems:
        raise EntryError(problems)
    if len(step):
        if SPS in ds:
            raise EntryError([f"SPS keys both at the top and in {SPS}"])
        ds.ScheduledProcedureStepSequence = [step]
    return ds


def _is_dicom_json(obj: dict[str, Any]) -> bool:
    return bool(obj) and all(re.fullmatch(r"[0-9A-Fa-f]{8}", k) for k in obj)


def entries_from_json(text: str) -> Iterator[Dataset]:
    """The entries of a JSON document (one object or a list; DICOM JSON or flat)."""
    document = json.loads(text)
    objects = document if isinstance(document, list) else [document]
    for obj in objects:
        if not isinstance(obj, dict):
            raise EntryError(["each JSON entry must be an object"])
        yield Dataset.from_json(obj) if _is_dicom_json(obj) else from_flat(obj)


def entries_from_csv(text: str) -> Iterator[Dataset]:
    """One entry per CSV row (header: keywords; ``\\`` separates values)."""
    for row in csv.DictReader(io.StringIO(text)):
        obj = {
            k.strip(): (v.split("\\") if "\\" in v else v)
            for k, v in row.items()
            if k and v not in (None, "")
        }
        yield from_flat(obj)


_DUMP_LINE = re.compile(r"^\s*\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)\s+(\S+)\s*(.*)$")


def _dump_value(rest: str) -> str:
    bracket = re.match(r"^\[(.*)\]", rest)
    if bracket:
        return bracket.group(1)
    if rest.startswith("(no value") or rest.startswith("(Sequence") or rest.startswith("(Item"):
        return ""
    return rest.split("#", 1)[0].strip()


def entries_from_dump(text: str) -> Iterator[Dataset]:
    """One entry from ``dcmdump``/``dump2dcm`` text (nested sequences included)."""
    root = Dataset()
    # frames: a dataset being filled, or [parent dataset, sequence keyword, items]
    stack: list[Any] = [root]

    def close_sequence() -> None:
        parent, keyword, items = stack.pop()
        setattr(parent, keyword, items)

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DUMP_LINE.match(line)
        if not match:
            raise EntryError([f"line {number}: not a dump line"])
        tag = int(match.group(1) + match.group(2), 16)
        vr, rest = match.group(3).upper(), match.group(4).strip()
        if tag == 0xFFFEE000:  # item start
            if not isinstance(stack[-1], list):
                raise EntryError([f"line {number}: an item outside a sequence"])
            item = Dataset()
            stack[-1][2].append(item)
            stack.append(item)
        elif tag == 0xFFFEE00D:  # item end
            if len(stack) < 3 or not isinstance(stack[-1], Dataset):
                raise EntryError([f"line {number}: an item end without an item"])
            stack.pop()
        elif tag == 0xFFFEE0DD:  # sequence end
            if not isinstance(stack[-1], list):
                raise EntryError([f"line {number}: a sequence end without a sequence"])
            close_sequence()
        elif (tag >> 16) == 0x0002 or (tag & 0xFFFF) == 0:
            continue  # file meta and group lengths are written anew
        else:
            if not isinstance(stack[-1], Dataset):
                raise EntryError([f"line {number}: an attribute outside an item"])
            keyword = keyword_for_tag(tag)
            if not keyword:
                raise EntryError([f"line {number}: ({match.group(1)},{match.group(2)}) unknown"])
            if vr == "SQ":
                stack.append([stack[-1], keyword, []])
                continue
            if keyword in stack[-1]:
                continue  # an attribute given twice: the first counts, as with dump2dcm
            value = _dump_value(rest)
            setattr(stack[-1], keyword, value.split("\\") if "\\" in value else value)
    while len(stack) > 1:  # sequences left open at the end of the text
        if isinstance(stack[-1], Dataset):
            stack.pop()
        else:
            close_sequence()
    yield root


# ------------------------------------------------------------------------------ completing
def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def stable_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (PS3.5 B.2: ``2.25.`` and a name-based UUID as integer).

    Examples
    --------
    >>> stable_uid("A1", "RP1", "P1") == stable_uid("A1", "RP1", "P1")
    True
    >>> stable_uid("A1", "RP1", "P1").startswith("2.25.")
    True
    """
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'wlmserver:' + name).int}"


def _walk_text(ds: Dataset, where: str = "") -> Iterator[tuple[str, str]]:
    """``(attribute path, text)`` of every value in a character-set VR."""
    for element in ds:
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                yield from _walk_text(item, f"{where}{element.keyword}[{n}].")
        elif element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value:
            values = element.value if element.VM > 1 else [element.value]
            yield from ((f"{where}{element.keyword}", str(v)) for v in values)


def _invalid(ds: Dataset, where: str = "") -> Iterator[str]:
    for element in ds:
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                yield from _invalid(item, f"{where}{element.keyword}[{n}].")
            continue
        if element.VR not in _CHECKED_VRS or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            try:
                validate_value(element.VR, str(value), pydicom_config.RAISE)
            except (ValueError, TypeError):
                yield f"{where}{element.keyword}: not a valid {element.VR} value"


def complete(ds: Dataset) -> Dataset:
    """Fill in what the standard requires and a RIS rarely knows; refuse what is still wrong.

    Raises
    ------
    EntryError
        Naming every missing Type 1 attribute and every invalid value.
    """
    steps = list(ds.get(SPS, None) or [])
    accession = _text(ds, "AccessionNumber")
    if not _text(ds, "RequestedProcedureID") and accession:
        ds.RequestedProcedureID = accession
    procedure = _text(ds, "RequestedProcedureID")
    if not _text(ds, "StudyInstanceUID") and (accession or procedure):
        ds.StudyInstanceUID = stable_uid(accession, procedure, _text(ds, "PatientID"))
    for n, step in enumerate(steps, start=1):
        if not _text(step, "ScheduledProcedureStepID") and procedure:
            step.ScheduledProcedureStepID = f"{procedure}.{n}"[:16]
    texts = list(_walk_text(ds))
    if "SpecificCharacterSet" not in ds and not all(t.isascii() for _, t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    problems = []
    declared = ds.get("SpecificCharacterSet", "") or ""
    charset = tuple(str(v) for v in declared) if not isinstance(declared, str) else (declared,)
    named = "\\".join(charset) or "ISO_IR 6"
    for where, text in texts:
        if not text.isascii() and not can_encode([text], charset):
            problems.append(
                f"{where}: has characters {named} cannot hold "
                "(leave out SpecificCharacterSet, or use ISO_IR 192)"
            )
    if not steps:
        problems.append(f"no scheduled procedure step (no SPS keys and no {SPS})")
    for alternatives in REQUIRED_TOP:
        if not any(_text(ds, k) or ds.get(k) for k in alternatives):
            problems.append(f"{' or '.join(alternatives)} missing")
    for n, step in enumerate(steps, start=1):
        label = f"SPS item {n}: " if len(steps) > 1 else ""
        for alternatives in REQUIRED_SPS:
            if not any(_text(step, k) or step.get(k) for k in alternatives):
                problems.append(f"{label}{' or '.join(alternatives)} missing")
    problems.extend(_invalid(ds))
    if problems:
        raise EntryError(problems)
    return ds


# ------------------------------------------------------------------------------ writing
def file_name(ds: Dataset) -> str:
    """``<AccessionNumber>_<RequestedProcedureID>.wl``, reduced to safe characters."""
    stem = "_".join(
        p for p in (_text(ds, "AccessionNumber"), _text(ds, "RequestedProcedureID")) if p
    )
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem or _text(ds, "PatientID") or "entry")
    return f"{stem.lstrip('.')[:100] or 'entry'}.wl"


def write_entry(ds: Dataset, folder: Path) -> Path:
    """Write one completed entry atomically into an AE folder, checked as the server reads it.

    Raises
    ------
    EntryError
        The written file would not be served (the reason from the server's own reader).
    """
    from wlmserver.check import NOT_SERVED, check_file  # the server's reader, via check

    folder.mkdir(parents=True, exist_ok=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    final = folder / file_name(ds)
    temp = folder / f".{final.name}.{os.getpid()}.tmp"  # a name the server ignores
    try:
        ds.save_as(temp, enforce_file_format=True)
        report, _ = check_file(temp, folder.name)
        if report.verdict == NOT_SERVED:
            raise EntryError(report.problems)
        os.replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()
    return final


READERS = {"json": entries_from_json, "csv": entries_from_csv, "dump": entries_from_dump}


def detect_format(text: str, path: Path | None) -> str:
    """``json``, ``csv`` or ``dump``, from the suffix or the first character."""
    suffix = path.suffix.lower().lstrip(".") if path else ""
    if suffix in READERS:
        return suffix
    if suffix == "txt":
        return "dump"
    start = text.lstrip()[:1]
    if start in ("{", "["):
        return "json"
    if start == "(" or start == "#":
        return "dump"
    return "csv"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver create``."""
    p = argparse.ArgumentParser(
        prog="wlmserver create",
        description="Write worklist files from JSON (DICOM JSON or keywords), CSV or dcmdump "
        "text into an AE folder, atomically; entries that would be incomplete are refused.",
        allow_abbrev=False,
    )
    p.add_argument("input", nargs="+", help="input files ('-' reads standard input)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the AE folder to write into")
    p.add_argument("--format", choices=["auto", *READERS], default="auto")
    p.add_argument("--dry-run", action="store_true", help="check the entries, write nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver create``; returns the exit status."""
    args = build_parser().parse_args(argv)
    written = refused = 0
    last_report = time.monotonic()
    for name in args.input:
        path = None if name == "-" else Path(name)
        try:
            raw = sys.stdin.buffer.read() if path is None else path.read_bytes()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:  # dump2dcm input in ISO_IR 100 and the like
                text = raw.decode("latin-1")
        except OSError as exc:
            print(f"wlmserver create: {name}: {exc.strerror or exc}", file=sys.stderr)
            refused += 1
            continue
        fmt = detect_format(text, path) if args.format == "auto" else args.format
        try:
            with warnings.catch_warnings():  # pydicom's value warnings: refused below instead
                warnings.simplefilter("ignore", UserWarning)
                entries = list(READERS[fmt](text))
        except (EntryError, ValueError, KeyError, TypeError) as exc:
            print(f"REFUSED {name}: cannot read it as {fmt} ({exc})", file=sys.stderr)
            refused += 1
            continue
        for number, ds in enumerate(entries, start=1):
            label = name if len(entries) == 1 else f"{name} entry {number}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    complete(ds)
                    target = args.out / file_name(ds)
                    if not args.dry_run:
                        target = write_entry(ds, args.out)
            except EntryError as exc:
                print(f"REFUSED {label}: {'; '.join(exc.problems)}", file=sys.stderr)
                refused += 1
                continue
            written += 1
            print(target)
            if time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                print(f"... {written} written, {refused} refused", file=sys.stderr)
    verb = "checked" if args.dry_run else "written"
    print(f"{written} entries {verb}, {refused} refused", file=sys.stderr)
    return 1 if refused else 0
