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
from wlmserver.matching.record import Layout, Record, Values, layout_for
from wlmserver.store.dicomfile import Incomplete, Undecodable, parse
from wlmserver.store.files import FileCutShort, FileResult, WorklistFileError, read_file_bytes

_START_DATE = 0x00400002
_START_TIME = 0x00400003


def missing_type1(record: Record, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """The Type 1 requirements a record does not meet, as readable names.

    A requirement with alternatives (``A`` or ``B``) is met by either having a value.
    """
    layout, values = record.parts()
    positions = layout.positions
    missing = []
    for name, tags in _requirements(required):
        for tag in tags:
            i = positions.get(tag)
            if i is not None and values[i]:  # what Record.has_value says, inline
                break
        else:
            missing.append(name)
    return missing


_TAGS = {
    keyword: tag_for_keyword(keyword) or 0
    for alternatives in (*REQUIRED_TOP, *REQUIRED_SPS)
    for keyword in alternatives
}
_REQUIREMENTS: dict[tuple[tuple[str, ...], ...], tuple[tuple[str, tuple[int, ...]], ...]] = {}


def _requirements(
    required: tuple[tuple[str, ...], ...],
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Each requirement's readable name and the tags of its alternatives."""
    found = _REQUIREMENTS.get(required)
    if found is None:
        found = tuple(
            (" or ".join(alternatives), tuple(_TAGS[keyword] for keyword in alternatives))
            for alternatives in required
        )
        _REQUIREMENTS[required] = found
    return found


_CUTS: dict[Layout, tuple[Layout, int] | None] = {}
_CUTS_LIMIT = 4096  # layouts remembered at most (cleared when full)


def _without_sps(record: Record) -> Record:
    """The record without its Scheduled Procedure Step Sequence: its layout cut once per
    layout (the files of one RIS share a few), its values sliced."""
    layout, values = record.parts()
    if layout in _CUTS:
        cut = _CUTS[layout]
    else:
        tags = layout.tags
        cut = None
        if tags.count(SPS_SEQUENCE_TAG) == 1 and list(tags) == sorted(tags):
            i = tags.index(SPS_SEQUENCE_TAG)
            cut = (layout_for(tags[:i] + tags[i + 1 :], layout.vrs[:i] + layout.vrs[i + 1 :]), i)
        if len(_CUTS) >= _CUTS_LIMIT:
            _CUTS.clear()
        _CUTS[layout] = cut
    if cut is None:  # the general way: sorted again
        return Record([e for e in record if e[0] != SPS_SEQUENCE_TAG])
    top, i = cut
    return Record.assembled(top, values[:i] + values[i + 1 :])


_INSTANTS: dict[tuple[Values, Values], str] = {}
_INSTANTS_LIMIT = 16_384  # start dates and times remembered at most (cleared when full)


def _instant(dates: Values, times: Values) -> str:
    """:func:`sortable_instant`, remembered: start dates and times repeat across entries."""
    key = (dates, times)
    instant = _INSTANTS.get(key)
    if instant is None:
        instant = sortable_instant(dates, times)
        if len(_INSTANTS) >= _INSTANTS_LIMIT:
            _INSTANTS.clear()
        _INSTANTS[key] = instant
    return instant


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
    top = _without_sps(record)
    top_missing = missing_type1(top, REQUIRED_TOP)

    entries: list[Entry] = []
    problems: list[str] = []
    file_path, file_name = str(path), path.name
    for index, item in enumerate(items):
        missing = top_missing + missing_type1(item, REQUIRED_SPS)
        if missing:
            what = f"SPS item {index + 1}" if len(items) > 1 else "the entry"
            verdict = "not served" if reject_incomplete else "served anyway (-dfr)"
            problems.append(f"{label}{what} lacks Type 1 {', '.join(missing)}: {verdict}")
            if reject_incomplete:
                continue
        instant = _instant(item.text(_START_DATE), item.text(_START_TIME))
        number = first_item + index
        entries.append(Entry(file_path, number, top, item, charset, (instant, file_name, number)))
    return FileResult(tuple(entries), tuple(problems))
