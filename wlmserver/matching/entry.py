"""A worklist entry: one scheduled procedure step of one ``.wl`` file.

A file whose Scheduled Procedure Step Sequence holds several items yields one entry per item
(PS3.4 K.6: each C-FIND answer holds exactly one item). The entries of one file share its
top-level record.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wlmserver.matching.record import Record

try:  # the C accessor namedtuple fields use: as fast as a slot
    from collections import _tuplegetter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other Pythons

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(operator.itemgetter(index), doc=doc)


class Entry(tuple):  # type: ignore[type-arg]
    """One scheduled procedure step, ready to be matched and answered.

    A tuple underneath, so that the index cache makes 100,000 of them in one C call (a
    dataclass's ``__init__`` cost a tenth of a restart), but equal only to itself and hashed by
    identity, as one step of one file is: two entries alike are still two entries.

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

    __slots__ = ()

    if TYPE_CHECKING:
        path: str
        item: int
        top: Record
        sps: Record
        charset: tuple[str, ...]
        order: tuple[str, str, int]
    else:
        path = _tuplegetter(0, "The file it came from.")
        item = _tuplegetter(1, "The index of its SPS item (0-based).")
        top = _tuplegetter(2, "The file's top-level attributes.")
        sps = _tuplegetter(3, "The SPS item.")
        charset = _tuplegetter(4, "The file's Specific Character Set values.")
        order = _tuplegetter(5, "The sort key of answers.")

    def __new__(
        cls,
        path: str,
        item: int,
        top: Record,
        sps: Record,
        charset: tuple[str, ...],
        order: tuple[str, str, int],
    ) -> Entry:
        return tuple.__new__(cls, (path, item, top, sps, charset, order))

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Entry(path={self.path!r}, item={self.item!r}, order={self.order!r})"


def entries_from_rows(rows: Iterable[tuple[Any, ...]]) -> tuple[Entry, ...]:
    """Entries from ``(path, item, top, sps, charset, order)`` rows, made in C (what the
    index cache reads entries back with)."""
    return tuple(map(_from_row, rows))


_from_row = functools.partial(tuple.__new__, Entry)
