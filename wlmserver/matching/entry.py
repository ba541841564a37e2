"""A worklist entry: one scheduled procedure step of one ``.wl`` file.

A file whose Scheduled Procedure Step Sequence holds several items yields one entry per item
(PS3.4 K.6: each C-FIND answer holds exactly one item). The entries of one file share its
top-level record.
"""

from __future__ import annotations

from dataclasses import dataclass

from wlmserver.matching.record import Record


@dataclass(frozen=True, eq=False, slots=True)
class Entry:
    """One scheduled procedure step, ready to be matched and answered.

    Attributes
    ----------
    path : str
        The file it came from.
    item : int
        The index of its item in the file's Scheduled Procedure Step Sequence (0-based).
    top : Record
        The file's top-level attributes, decoded, without the SPS sequence.
    sps : Record
        The SPS item, decoded.
    charset : tuple of str
        The file's Specific Character Set values (empty for the default repertoire).
    order : tuple
        The sort key of answers: scheduled start instant, file name, item.
    """

    path: str
    item: int
    top: Record
    sps: Record
    charset: tuple[str, ...]
    order: tuple[str, str, int]
