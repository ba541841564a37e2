"""JSON drop files: ``*.json`` in an AE folder, served like ``.wl`` files (``--json-drops``).

A RIS script can drop the JSON that ``wlmserver create`` reads (the DICOM JSON model or
keywords as keys; one entry or a list of them) straight into an AE folder. Its entries are
grouped, completed and validated exactly as ``wlmserver create`` does
(:func:`wlmserver.store.orders.plan_orders`: entries of one requested procedure are its steps), then
turned into the same records a ``.wl`` file gives; an order that is refused is not served and
the file's log line says why. A file that is not (yet) valid JSON, one still being
written, is not served until it is.
"""

from __future__ import annotations

import json
import warnings
from io import BytesIO
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from wlmserver.matching.entry import Entry
from wlmserver.store.dicomfile import Incomplete, Undecodable, parse
from wlmserver.store.files import FileCutShort, FileResult, WorklistFileError, read_file_bytes
from wlmserver.store.orders import (
    WORKLIST_FILE_CLASS,
    EntryError,
    InputEntry,
    describe_entries,
    entries_from_json,
    plan_orders,
)
from wlmserver.store.wlfile import split_entries


def read_json_drop(path: Path, *, reject_incomplete: bool = True) -> FileResult:
    """The entries of a JSON drop file.

    Raises
    ------
    WorklistFileError
        Not UTF-8, not valid JSON (cut short?), or no entry at all could be read.
    """
    return parse_json_drop(read_file_bytes(path), path, reject_incomplete=reject_incomplete)


def parse_json_drop(data: bytes, path: Path, *, reject_incomplete: bool = True) -> FileResult:
    """The entries of a JSON drop file's bytes (see :func:`read_json_drop`); ``path`` names
    the entries' file."""
    if not data.strip():
        raise FileCutShort("the file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorklistFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            datasets = list(entries_from_json(text))
    except json.JSONDecodeError as exc:
        raise FileCutShort(f"not valid JSON, cut short? ({exc.msg} at line {exc.lineno})") from None
    except (EntryError, ValueError, KeyError, TypeError) as exc:
        raise WorklistFileError(f"not a worklist entry ({exc})") from None
    entries: list[Entry] = []
    problems: list[str] = []
    inputs = [InputEntry(path.name, n, "entry", ds) for n, ds in enumerate(datasets, start=1)]
    # entries of one requested procedure are one order with one SPS item per step, as
    # ``wlmserver create`` makes them (not two entries that both claim step <accession>.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        orders = plan_orders(inputs)
    for order in orders:
        label = f"{describe_entries(order.entries).removeprefix(path.name + ' ')}: "
        label = label if len(datasets) > 1 else ""
        if order.dataset is None:
            problems.append(f"{label}{'; '.join(order.problems)}: not served")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ds = order.dataset
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
                ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3")  # not kept
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
            record, charset = parse(buffer.getvalue())
            result = split_entries(
                record,
                charset,
                path,
                reject_incomplete=reject_incomplete,
                first_item=len(entries),
                label=label,
            )
        except (WorklistFileError, Incomplete, Undecodable, ValueError, TypeError) as exc:
            problems.append(f"{label}{exc}: not served")
            continue
        entries.extend(result.entries)
        problems.extend(result.problems)
    if not entries and problems and len(datasets) == 1:
        raise WorklistFileError(problems[0].removesuffix(": not served"))
    return FileResult(tuple(entries), tuple(problems))
