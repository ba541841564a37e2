"""A worklist entry: one scheduled procedure step of one ``.wl`` file.

A file whose Scheduled Procedure Step Sequence holds several items yields one entry per item
(PS3.4 K.6: each C-FIND answer holds exactly one item). An entry keeps two views of its data:
the decoded pydicom datasets that answers are built from, and a *record*, plain tuples of
decoded strings per tag, that the matcher reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from wlmserver.matching import Values, normalise_text

Record = Mapping[int, Values | tuple["Record", ...]]
"""Decoded values by tag; a sequence is a tuple of records, one per item."""


@dataclass(frozen=True, eq=False)
class Entry:
    """One scheduled procedure step, ready to be matched and answered.

    Attributes
    ----------
    path : str
        The file it came from.
    item : int
        The index of its item in the file's Scheduled Procedure Step Sequence (0-based).
    top : Dataset
        The file's top-level attributes, decoded, without the SPS sequence.
    sps : Dataset
        The SPS item, decoded.
    top_record, sps_record : Record
        The same data as plain strings for matching.
    charset : tuple of str
        The file's Specific Character Set values (empty for the default repertoire).
    order : tuple
        The sort key of answers: scheduled start instant, file, item.
    """

    path: str
    item: int
    top: Dataset
    sps: Dataset
    top_record: Record
    sps_record: Record
    charset: tuple[str, ...]
    order: tuple[str, str, int]


def element_values(vr: str, value: object) -> Values:
    """Turn a decoded element value into the tuple of strings the matcher reads.

    Empty values are dropped, so an element with no value gives ``()``.
    """
    if value is None:
        return ()
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if item is None:
            continue
        text = item.hex() if isinstance(item, bytes) else str(item)
        text = normalise_text(vr, text)
        if text:
            out.append(text)
    return tuple(out)


def values_of(record: Record, tag: int) -> Values:
    """The values a record holds for a non-sequence attribute (``()`` if absent or a sequence)."""
    value = record.get(tag, ())
    if value and not isinstance(value[0], str):
        return ()
    return value  # type: ignore[return-value]


def to_record(ds: Dataset) -> dict[int, Values | tuple[Record, ...]]:
    """Build the matcher's view of a decoded dataset (recursively for sequences)."""
    record: dict[int, Values | tuple[Record, ...]] = {}
    for elem in ds:
        if elem.VR == "SQ":
            record[int(elem.tag)] = tuple(to_record(item) for item in elem.value)
        else:
            record[int(elem.tag)] = element_values(elem.VR, elem.value)
    return record
