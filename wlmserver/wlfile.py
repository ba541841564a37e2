"""Read one worklist file and split it into entries, one per scheduled procedure step.

A file is served only when it parses completely, decodes in its Specific Character Set and
holds a Scheduled Procedure Step Sequence. An item lacking a PS3.4 Table K.6-1 Type 1 attribute
is not served unless rejection is disabled (wlmscpfs's ``-dfr``); either way the reason is
reported, so the store can log it once.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from wlmserver.completeness import Incomplete, check_complete
from wlmserver.entry import Entry, to_record, values_of
from wlmserver.keys import REQUIRED_SPS, REQUIRED_TOP, SPS_SEQUENCE_TAG
from wlmserver.matching import sortable_instant

_START_DATE = 0x00400002
_START_TIME = 0x00400003

#: Warnings pydicom gives when it cannot decode text faithfully: a file that raises them would
#: be served with replaced or mislabelled characters, so it is rejected instead.
_DECODING_WARNINGS = ("decode", "encoding", "Specific Character Set", "character set")


class WorklistFileError(Exception):
    """The file cannot be served at all; the message says why, for one log line."""


@dataclass(frozen=True)
class FileResult:
    """What a worklist file yields.

    Attributes
    ----------
    entries : tuple of Entry
        The entries to serve, in item order.
    problems : tuple of str
        One reason per item not served (or served despite being incomplete).
    """

    entries: tuple[Entry, ...]
    problems: tuple[str, ...]


def is_worklist_name(name: str) -> bool:
    """Whether a file name is served: ``*.wl`` in any case, not hidden, not a temporary name.

    Examples
    --------
    >>> [is_worklist_name(n) for n in ("a.wl", "B.WL", ".a.wl", "a.wl.tmp", "~a.wl", "a.wl~")]
    [True, True, False, False, False, False]
    """
    return name.lower().endswith(".wl") and len(name) > 3 and not name.startswith((".", "~", "#"))


def missing_type1(ds: Dataset, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """The Type 1 requirements a dataset does not meet, as readable names.

    A requirement with alternatives (``A`` or ``B``) is met by either having a value.
    """
    missing = []
    for alternatives in required:
        if not any(_has_value(ds, keyword) for keyword in alternatives):
            missing.append(" or ".join(alternatives))
    return missing


def _has_value(ds: Dataset, keyword: str) -> bool:
    elem = ds.get(keyword)
    if elem is None:
        return False
    value = ds[keyword].value
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip(" \x00") != ""
    try:
        return len(value) > 0
    except TypeError:
        return True


def _read_dataset(path: Path) -> Dataset:
    data = path.read_bytes()  # one read: what is checked is what is parsed
    if not data:
        raise WorklistFileError("the file is empty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                ds = dcmread(io.BytesIO(data))
            except InvalidDicomError:
                # wlmscpfs also serves datasets stored without the Part 10 header
                ds = dcmread(io.BytesIO(data), force=True)
                first = next(iter(ds.keys()), None)
                if first is None or not (first >> 16 == 0x0002 or dictionary_has_tag(first)):
                    raise WorklistFileError("not a DICOM file") from None
            implicit, little = ds.original_encoding
            try:
                check_complete(data, implicit=bool(implicit), little=little is not False)
            except Incomplete as exc:
                raise WorklistFileError(f"cut short, still being written? ({exc})") from None
            charset = ds.get("SpecificCharacterSet", "")
            names = list(charset) if not isinstance(charset, str) else [charset]
            unknown = [n for n in names if n and n.strip() not in python_encoding]
            if unknown:
                raise WorklistFileError(f"unknown Specific Character Set {unknown[0]!r}")
            for _elem in ds.iterall():  # decode every element now, not while answering
                pass
        except WorklistFileError:
            raise
        except Exception as exc:  # pydicom raises many types for truncated or garbled data
            raise WorklistFileError(f"not a readable DICOM file ({_reason(exc)})") from None
    for warning in caught:
        text = str(warning.message)
        if any(word.lower() in text.lower() for word in _DECODING_WARNINGS):
            raise WorklistFileError(f"text does not decode: {text}")
    if len(ds) == 0:
        raise WorklistFileError("the file holds no attributes")
    return ds


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    ds = _read_dataset(path)
    if SPS_SEQUENCE_TAG not in ds:
        raise WorklistFileError("no ScheduledProcedureStepSequence (0040,0100)")
    items = list(ds[SPS_SEQUENCE_TAG].value or [])
    if not items:
        raise WorklistFileError("ScheduledProcedureStepSequence (0040,0100) has no item")

    top = Dataset()
    for elem in ds:
        if int(elem.tag) != SPS_SEQUENCE_TAG:
            top.add(elem)
    charset_value = ds.get("SpecificCharacterSet", "")
    charset = tuple(
        s.strip() for s in ([charset_value] if isinstance(charset_value, str) else charset_value)
    )
    if charset == ("",):
        charset = ()
    top_record = to_record(top)
    top_missing = missing_type1(top, REQUIRED_TOP)

    entries: list[Entry] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        missing = top_missing + missing_type1(item, REQUIRED_SPS)
        if missing:
            label = f"SPS item {index + 1}" if len(items) > 1 else "the entry"
            verdict = "not served" if reject_incomplete else "served anyway (-dfr)"
            problems.append(f"{label} lacks Type 1 {', '.join(missing)}: {verdict}")
            if reject_incomplete:
                continue
        sps_record = to_record(item)
        instant = sortable_instant(
            values_of(sps_record, _START_DATE), values_of(sps_record, _START_TIME)
        )
        entries.append(
            Entry(
                path=str(path),
                item=index,
                top=top,
                sps=item,
                top_record=top_record,
                sps_record=sps_record,
                charset=charset,
                order=(instant, path.name, index),
            )
        )
    return FileResult(tuple(entries), tuple(problems))
