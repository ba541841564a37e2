"""Records and file states as plain data (tuples of strings and numbers), read back in C.

What the index cache (:mod:`wlmserver.store.cache`) writes, and what worker processes reading
files (:mod:`wlmserver.store.workers`) send back, are the same thing: records (with their shared
layouts), entries and file states, as plain data :mod:`marshal` writes and reads without running
any code. Records go in a flat table where each comes after the item records it holds, and the
records without items first, so that reading back makes nearly every object in C (:func:`map`
over columns), without recursion or lookups: 100,000 entries in about a second.
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar

from wlmserver.matching.entry import Entry, entries_from_rows
from wlmserver.matching.record import Layout, Record, assembled_all, layout_for
from wlmserver.store.files import FileState

_T = TypeVar("_T")
_MARSHAL_VERSION = 4

LayoutTable = tuple[tuple[tuple[int, ...], tuple[str, ...]], ...]
"""The layouts of a flat record table: ``(tags, vrs)`` each, by number."""


def picked(rows: Sequence[_T], places: Sequence[int]) -> tuple[_T, ...]:
    """``tuple(rows[i] for i in places)``, made in C.

    Examples
    --------
    >>> picked("abcd", (3, 0)), picked("abcd", (2,)), picked("abcd", ())
    (('d', 'a'), ('c',), ())
    """
    if len(places) > 1:
        return itemgetter(*places)(rows)  # type: ignore[no-any-return]
    return (rows[places[0]],) if places else ()


class RecordPacker:
    """Records to plain data: layouts once, in a table, by number; records once each, in a
    flat table where each record comes after the item records it holds, by number.

    The flat table is what makes reading back cheap: one loop over it makes every record,
    without recursion or any lookup, and entries and lookups refer to records and entries by
    their place in a table.
    """

    def __init__(self, *, merge_alike: bool = True) -> None:
        #: Whether records alike (equal values, distinct objects) are written once: worth it
        #: for the whole index (the cache), not for one batch of files, whose records are
        #: nearly all different (and whose repeated items are one object already)
        self.merge_alike = merge_alike
        self.layouts: dict[int, int] = {}  # id(layout) -> its number
        self.table: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        self.sequences: list[tuple[int, ...]] = []  # layout number -> its SQ positions
        self._keep: list[Layout] = []  # the layouts numbered (their ids stay theirs)
        #: every record encoded, in the order it is to be made back
        self.records: list[tuple[int, tuple[Any, ...]]] = []
        #: encoded record -> its number: records alike are written once, and read back as one
        #: shared, immutable record
        self._numbers: dict[tuple[int, tuple[Any, ...]], int] = {}
        self._done: dict[int, tuple[int, Record]] = {}  # id(record) -> (its number, record)

    def _layout(self, layout: Layout) -> int:
        number = self.layouts.get(id(layout))
        if number is None:
            number = self.layouts[id(layout)] = len(self.table)
            self.table.append((layout.tags, layout.vrs))
            self.sequences.append(tuple(i for i, vr in enumerate(layout.vrs) if vr == "SQ"))
            self._keep.append(layout)
        return number

    def record(self, record: Record) -> int:
        """The number of a record in the flat table (its items numbered first)."""
        done = self._done.get(id(record))
        if done is not None:
            return done[0]
        layout, values = record.parts()
        number = self._layout(layout)
        positions = self.sequences[number]
        if positions:
            encoded: list[Any] = list(values)
            for i in positions:
                encoded[i] = tuple(self.record(item) for item in values[i])  # type: ignore[arg-type]
            values = tuple(encoded)
        key = (number, values)
        place = self._numbers.get(key) if self.merge_alike else None
        if place is None:
            place = len(self.records)
            if self.merge_alike:
                self._numbers[key] = place
            self.records.append(key)
        self._done[id(record)] = (place, record)  # the record is kept: its id stays its own
        return place

    def flat_records(self) -> tuple[tuple[Any, ...], dict[int, int]]:
        """The records table as columns: the records without items first (read back in one
        C call), then the others, each after the records it holds; and the place each
        record's number has in that order."""
        plain = [i for i, (n, _) in enumerate(self.records) if not self.sequences[n]]
        nested = [i for i, (n, _) in enumerate(self.records) if self.sequences[n]]
        order = plain + nested  # the nested keep their order: items before what holds them
        place = {number: i for i, number in enumerate(order)}
        renumbered = []
        for i in nested:
            n, values = self.records[i]
            fixed: list[Any] = list(values)
            for j in self.sequences[n]:
                fixed[j] = tuple(place[k] for k in values[j])
            renumbered.append((n, tuple(fixed)))
        return (
            tuple(self.records[i][0] for i in plain),
            tuple(self.records[i][1] for i in plain),
            tuple(renumbered),
        ), place


def unpack_records(table: LayoutTable, flat: tuple[Any, ...]) -> list[Record]:
    """The records of a flat table (:meth:`RecordPacker.flat_records`), by number."""
    plain_numbers, plain_values, nested = flat
    layouts = [layout_for(tuple(tags), tuple(vrs)) for tags, vrs in table]
    sequences = [tuple(i for i, vr in enumerate(layout.vrs) if vr == "SQ") for layout in layouts]
    records = assembled_all(map(layouts.__getitem__, plain_numbers), plain_values)
    append, assembled = records.append, Record.assembled
    for number, values in nested:  # each after the records it holds
        values = list(values)
        for i in sequences[number]:
            values[i] = picked(records, values[i])
        append(assembled(layouts[number], tuple(values)))
    return records


#: A FileState from a 4-tuple ``(signature, entries, problem, cut_short)``, made in C.
file_state = partial(tuple.__new__, FileState)


def pack_states(states: Sequence[tuple[str, FileState]]) -> bytes:
    """File states (by file name) as marshalled plain data (what a worker sends back)."""
    packer = RecordPacker(merge_alike=False)
    rows = []
    for fname, state in states:
        entries = tuple(
            (e.path, e.item, packer.record(e.top), packer.record(e.sps), e.charset, e.order)
            for e in state.entries
        )
        rows.append((fname, state.signature, entries, state.problem, state.cut_short))
    flat, place = packer.flat_records()
    renumbered = tuple(
        (
            fname,
            signature,
            tuple((p, i, place[t], place[s], c, o) for p, i, t, s, c, o in entries),
            problem,
            cut_short,
        )
        for fname, signature, entries, problem, cut_short in rows
    )
    return marshal.dumps((tuple(packer.table), flat, renumbered), _MARSHAL_VERSION)


def unpack_states(data: bytes) -> list[tuple[str, FileState]]:
    """The file states :func:`pack_states` packed, with their records and entries."""
    table, flat, rows = marshal.loads(data)
    records = unpack_records(table, flat)
    record = records.__getitem__
    states = []
    for fname, signature, entries, problem, cut_short in rows:
        made: tuple[Entry, ...] = entries_from_rows(
            (p, i, record(t), record(s), c, o) for p, i, t, s, c, o in entries
        )
        states.append((fname, FileState(signature, made, problem, cut_short)))
    return states


__all__ = [
    "LayoutTable",
    "RecordPacker",
    "file_state",
    "pack_states",
    "picked",
    "unpack_records",
    "unpack_states",
]
