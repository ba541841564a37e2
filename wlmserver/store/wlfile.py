"""Read one worklist file and split it into entries, one per scheduled procedure step.

A file is served only when it parses completely, decodes in its Specific Character Set and
holds a Scheduled Procedure Step Sequence. An item lacking a PS3.4 Table K.6-1 Type 1 attribute
is not served unless rejection is disabled (wlmscpfs's ``-dfr``); either way the reason is
reported, so the store can log it once.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import REQUIRED_SPS, REQUIRED_TOP, SPS_SEQUENCE_TAG
from wlmserver.matching.primitives import sortable_instant
from wlmserver.matching.record import Record
from wlmserver.store.dicomfile import Incomplete, Undecodable, parse
from wlmserver.store.files import FileCutShort, FileResult, WorklistFileError, read_file_bytes

_START_DATE = 0x00400002
_START_TIME = 0x00400003


def missing_type1(record: Record, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """The Type 1 requirements a record does not meet, as readable names.

    A requirement with alternatives (``A`` or ``B``) is met by either having a value.
    """
    return [
        " or ".join(alternatives)
        for alternatives in required
        if not any(record.has_value(_TAGS[keyword]) for keyword in alternatives)
    ]


_TAGS = {
    keyword: tag_for_keyword(keyword) or 0
    for alternatives in (*REQUIRED_TOP, *REQUIRED_SPS)
    for keyword in alternatives
}


def _parse_record(data: bytes) -> tuple[Record, tuple[str, ...]]:
    if not data:
        raise FileCutShort("the file is empty")
    try:
        return parse(data)
    except Incomplete as exc:
        raise FileCutShort(f"cut short ({exc})") from None
    except Undecodable as exc:
        raise WorklistFileError(str(exc)) from None
    except (struct.error, ValueError, LookupError) as exc:
        raise WorklistFileError(f"not a readable DICOM file ({exc})") from None


def read_worklist_file(path: str | Path, *, reject_incomplete: bool = True) -> FileResult:
    """Read a ``.wl`` file into one entry per item of its Scheduled Procedure Step Sequence.

    Parameters
    ----------
    path : str or Path
        The file.
    reject_incomplete : bool
        Leave out items that lack a Type 1 attribute of PS3.4 Table K.6-1 (wlmscpfs's default,
        ``-efr``); with ``False`` (``-dfr``) they are served and still reported.

    Returns
    -------
    FileResult
        The entries, and one problem line per incomplete item.

    Raises
    ------
    WorklistFileError
        The file cannot be served at all: unreadable, truncated, undecodable text, no SPS.
    """
    path = Path(path)
    return parse_worklist(read_file_bytes(path), path, reject_incomplete=reject_incomplete)


def parse_worklist(data: bytes, path: Path, *, reject_incomplete: bool = True) -> FileResult:
    """The entries of a ``.wl`` file's bytes (see :func:`read_worklist_file`); ``path`` names
    the entries' file."""
    record, charset = _parse_record(data)
    return split_entries(record, charset, path, reject_incomplete=reject_incomplete)


def split_entries(
    record: Record,
    charset: tuple[str, ...],
    path: Path,
    *,
    reject_incomplete: bool = True,
    first_item: int = 0,
    label: str = "",
) -> FileResult:
    """The entries of one parsed worklist dataset, one per SPS item (see
    :func:`read_worklist_file`); items are numbered from ``first_item``, and problems start
    with ``label`` (for files that hold several datasets)."""
    items = record.items(SPS_SEQUENCE_TAG)
    if SPS_SEQUENCE_TAG not in record:
        raise WorklistFileError(f"{label}no ScheduledProcedureStepSequence (0040,0100)")
    if not items:
        raise WorklistFileError(f"{label}ScheduledProcedureStepSequence (0040,0100) has no item")
    top = Record([e for e in record if e[0] != SPS_SEQUENCE_TAG])
    top_missing = missing_type1(top, REQUIRED_TOP)

    entries: list[Entry] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        missing = top_missing + missing_type1(item, REQUIRED_SPS)
        if missing:
            what = f"SPS item {index + 1}" if len(items) > 1 else "the entry"
            verdict = "not served" if reject_incomplete else "served anyway (-dfr)"
            problems.append(f"{label}{what} lacks Type 1 {', '.join(missing)}: {verdict}")
            if reject_incomplete:
                continue
        instant = sortable_instant(item.text(_START_DATE), item.text(_START_TIME))
        number = first_item + index
        entries.append(Entry(str(path), number, top, item, charset, (instant, path.name, number)))
    return FileResult(tuple(entries), tuple(problems))
