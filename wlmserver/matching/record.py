"""Compact, immutable records of decoded DICOM data: what the index keeps per entry.

A pydicom ``Dataset`` costs tens of kilobytes per worklist entry; 100,000 of them do not fit the
memory budget of a worklist server. A :class:`Record` keeps only decoded values: one tuple of
values per attribute, in tag order. The tags and VRs of a record live in a shared
:class:`Layout`, since the files a RIS writes almost all have the same attributes, and small
values that repeat across entries (modalities, dates, station names, empty values) are shared
too. A record answers ``text(tag)`` (the values of a non-sequence attribute) and
``items(tag)`` (the item records of a sequence) in constant time.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

Values = tuple[str, ...]
"""The decoded values of one attribute (``AA32\\AA33`` is ``("AA32", "AA33")``)."""

Value = Values | tuple["Record", ...]
"""A record's value for one attribute: strings, or item records for a sequence."""


class Layout:
    """The tags and VRs of a record, shared by all records with the same attributes."""

    __slots__ = ("positions", "tags", "vrs")

    def __init__(self, tags: tuple[int, ...], vrs: tuple[str, ...]) -> None:
        self.tags = tags
        self.vrs = vrs
        self.positions = {tag: i for i, tag in enumerate(tags)}


_LAYOUTS: dict[tuple[tuple[int, ...], tuple[str, ...]], Layout] = {}
_SHARED: dict[Values, Values] = {}
_SHARE_LOCK = threading.Lock()
_SHARE_LIMIT = 200_000  # distinct shared values at most (a bound, not a cache policy)


def layout_for(tags: tuple[int, ...], vrs: tuple[str, ...]) -> Layout:
    """The shared layout for these tags and VRs."""
    key = (tags, vrs)
    layout = _LAYOUTS.get(key)
    if layout is None:
        with _SHARE_LOCK:
            layout = _LAYOUTS.setdefault(key, Layout(tags, vrs))
    return layout


def share(values: Values) -> Values:
    """Return one shared copy of a short, probably repeated value tuple."""
    if not values:
        return ()
    shared = _SHARED.get(values)
    if shared is not None:
        return shared
    if len(values) == 1 and len(values[0]) <= 24 and len(_SHARED) < _SHARE_LIMIT:
        with _SHARE_LOCK:
            return _SHARED.setdefault(values, values)
    return values


_first = operator.itemgetter(0)

try:  # the C accessor namedtuple fields use: as fast as a slot
    from collections import _tuplegetter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other Pythons

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(operator.itemgetter(index), doc=doc)


class Record(tuple):  # type: ignore[type-arg]
    """Decoded attributes of one dataset level, in tag order.

    A pair ``(layout, values)`` underneath, so that the index cache makes 200,000 of them in
    one C call (:func:`assembled_all`); it is used only through the methods below.

    Parameters
    ----------
    elements : list of (tag, vr, value)
        In any order; sorted here.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        _layout: Layout
        _values: tuple[Value, ...]
    else:
        _layout = _tuplegetter(0, "The shared layout.")
        _values = _tuplegetter(1, "The values, in tag order.")

    def __new__(cls, elements: list[tuple[int, str, Value]]) -> Record:
        elements.sort(key=_first)
        if elements:
            tags, vrs, values = zip(*elements, strict=True)
        else:
            tags, vrs, values = (), (), ()
        return tuple.__new__(cls, (layout_for(tags, vrs), values))

    @classmethod
    def assembled(cls, layout: Layout, values: tuple[Value, ...]) -> Record:
        """A record from a layout and its values in tag order, as :meth:`parts` gave them
        (what the index cache reads back, without sorting again)."""
        return tuple.__new__(cls, (layout, values))

    def parts(self) -> tuple[Layout, tuple[Value, ...]]:
        """The shared layout and the values, in tag order (see :meth:`assembled`)."""
        return self._layout, self._values

    def __contains__(self, key: object) -> bool:
        tag = tag_for_keyword(key) if isinstance(key, str) else key
        return tag in self._layout.positions

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self._layout is other._layout and self._values == other._values

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[tuple[int, str, Value]]:
        """``(tag, vr, value)`` for each attribute, in tag order."""
        return iter(zip(self._layout.tags, self._layout.vrs, self._values, strict=True))

    def vr(self, tag: int) -> str | None:
        """The VR of an attribute, or None if the record does not hold it."""
        i = self._layout.positions.get(tag)
        return None if i is None else self._layout.vrs[i]

    def text(self, tag: int) -> Values:
        """The values of a non-sequence attribute; ``()`` if absent, empty or a sequence."""
        i = self._layout.positions.get(tag)
        if i is None or self._layout.vrs[i] == "SQ":
            return ()
        return self._values[i]  # type: ignore[return-value]

    def items(self, tag: int) -> tuple[Record, ...]:
        """The item records of a sequence attribute; ``()`` if absent or not a sequence."""
        i = self._layout.positions.get(tag)
        if i is None or self._layout.vrs[i] != "SQ":
            return ()
        return self._values[i]  # type: ignore[return-value]

    def has_value(self, tag: int) -> bool:
        """Whether the attribute is present with at least one value or item."""
        i = self._layout.positions.get(tag)
        return i is not None and len(self._values[i]) > 0

    def __getattr__(self, keyword: str) -> object:
        """Convenience for people and tests: ``record.PatientID`` is its single value (or the
        tuple of values, or of items); ``""`` when empty."""
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in self._layout.positions:
            raise AttributeError(keyword)
        value = self._values[self._layout.positions[tag]]
        if self.vr(tag) != "SQ" and len(value) <= 1:
            return value[0] if value else ""
        return value

    def __repr__(self) -> str:
        parts = ", ".join(f"{keyword_for_tag(t) or hex(t)}={v!r}" for t, _, v in self)
        return f"Record({parts})"


def assembled_all(layouts: Iterable[Layout], values: Iterable[tuple[Value, ...]]) -> list[Record]:
    """Records from layouts and values in tag order, pairwise, made in C (what the index
    cache reads records back with)."""
    return list(map(_from_pair, zip(layouts, values, strict=True)))


_from_pair = functools.partial(tuple.__new__, Record)
