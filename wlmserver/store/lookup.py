"""Lookups that narrow a query to candidate entries before exact matching.

A selective query (one station's CT steps today, one patient ID, one accession number, a patient
name prefix) should cost what its answer costs, not what the folder costs. A :class:`Lookup`
keeps, for one AE folder, the entries in answer order plus buckets of entries by scheduled
station AE title, modality, scheduled start date, patient ID and accession number, and the
patient names in sorted order. :meth:`Lookup.candidates` intersects the smallest applicable
sets for a compiled query; the exact PS3.4 C.2.2.2 matching then runs on those candidates
only, so the result is the same as a full scan, only cheaper.

A lookup is immutable. :meth:`Lookup.replace` returns a new one with some entries removed and
others added, copying only the buckets it touches (and the shallow outer tables), so a file
change in a folder of 100,000 entries costs milliseconds.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from wlmserver.matching.entry import Entry
from wlmserver.matching.primitives import (
    AnyMatcher,
    AnyOf,
    Range,
    Wildcard,
    fold_case_and_accents,
    pn_candidates,
)
from wlmserver.matching.query import CompiledQuery, ItemQuery
from wlmserver.matching.record import Layout

STATION = 0x00400001
MODALITY = 0x00080060
START_DATE = 0x00400002
START_TIME = 0x00400003
PATIENT_ID = 0x00100020
ACCESSION = 0x00080050
PATIENT_NAME = 0x00100010

#: Bucketed keys: tag -> whether it lives in the SPS item (else at the top level).
BUCKETED: dict[int, bool] = {
    STATION: True,
    MODALITY: True,
    START_DATE: True,
    PATIENT_ID: False,
    ACCESSION: False,
}

#: Candidate sets at most this large are matched as they are, not intersected further.
INTERSECT_ABOVE = 16
#: Intersect with a lookup set at most this many times larger than the candidates: building
#: its set of identities costs about as much per entry as 1/INTERSECT_RATIO exact matches.
INTERSECT_RATIO = 20

Buckets = MappingProxyType[str, tuple[Entry, ...]]
_T = TypeVar("_T")
_NAME_END = "\U0010ffff"


#: An entry's :attr:`~Entry.order` (its field 5), read in C: the key of every sort here.
_order: Callable[[Entry], tuple[str, str, int]] = operator.itemgetter(5)


def _keys(entry: Entry, tag: int) -> tuple[str, ...]:
    record = entry.sps if BUCKETED[tag] else entry.top
    return record.text(tag)


def _names(entry: Entry) -> set[str]:
    return {c for value in entry.top.text(PATIENT_NAME) for c in pn_candidates(value)}


def _in_order(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    unique = {id(e): e for e in entries}
    return tuple(sorted(unique.values(), key=_order))


NameRow = tuple[str, tuple[str, str, int], Entry]
"""``(name, order, entry)``: one patient name candidate of an entry, sorted by name."""


def _name_rows(entry: Entry) -> list[NameRow]:
    return [(name, entry.order, entry) for name in _names(entry)]


#: A name row's sort key, ``(name, order)``, made in C; and its name alone.
_name_order: Callable[[NameRow], tuple[str, tuple[str, str, int]]] = operator.itemgetter(0, 1)
_name: Callable[[NameRow], str] = operator.itemgetter(0)


def _name_identity(row: NameRow) -> tuple[str, int]:
    return row[0], id(row[2])


#: At most this many changes to a sorted sequence are made one by one (a binary search and a
#: list insertion or deletion each); more are made by one filtering pass and one sort, which
#: merges the two sorted runs in linear time.
_ONE_BY_ONE = 32


def _edited(
    rows: Sequence[_T],
    removed: Sequence[_T],
    added: Sequence[_T],
    key: Callable[[_T], Any],
    identity: Callable[[_T], Hashable] = id,
) -> tuple[_T, ...]:
    """``rows`` (sorted by ``key``) without ``removed`` (by ``identity``) and with ``added``,
    still sorted: in ``O(changes * log n)`` list edits for a few changes, one pass for many."""
    if len(removed) + len(added) <= _ONE_BY_ONE:
        edited = list(rows)
        for row in removed:
            wanted = identity(row)
            i = bisect.bisect_left(edited, key(row), key=key)
            while i < len(edited) and key(edited[i]) == key(row):
                if identity(edited[i]) == wanted:
                    del edited[i]
                    break
                i += 1
        for row in added:
            bisect.insort(edited, row, key=key)
        return tuple(edited)
    gone = {identity(row) for row in removed}
    kept = [row for row in rows if identity(row) not in gone] if gone else list(rows)
    if added:
        kept.extend(sorted(added, key=key))
        kept.sort(key=key)  # two sorted runs: merged in one pass
    return tuple(kept)


class Lookup:
    """The entries of one AE folder, in answer order, with lookups by key.

    Parameters
    ----------
    entries : tuple of Entry
        Sorted by :attr:`Entry.order`.
    buckets : mapping
        tag -> key value -> entries in answer order.
    names : tuple
        ``(name, order, entry)`` sorted, for patient name prefixes.
    """

    __slots__ = ("buckets", "dates", "entries", "names")

    def __init__(
        self,
        entries: tuple[Entry, ...],
        buckets: Mapping[int, Buckets],
        names: tuple[tuple[str, tuple[str, str, int], Entry], ...],
    ) -> None:
        self.entries = entries
        self.buckets = buckets
        self.names = names
        self.dates = tuple(sorted(buckets[START_DATE]))

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> Lookup:
        """Build a lookup from scratch."""
        builder = LookupBuilder()
        builder.add(entries)
        return builder.build()

    def replace(self, removed: Sequence[Entry], added: Sequence[Entry]) -> Lookup:
        """A new lookup without ``removed`` and with ``added`` (the entries of changed files).

        Each change is grouped by the keys it touches first, so the cost grows with the
        number of changes and of the buckets they touch, never with their product (10,000
        files changed while the server was down once took minutes here, at 100,000 entries).
        """
        if not removed and not added:
            return self
        entries = _edited(self.entries, removed, added, _order)

        buckets: dict[int, Buckets] = {}
        for tag, table in self.buckets.items():
            gone: dict[str, list[Entry]] = {}
            new_in: dict[str, list[Entry]] = {}
            for changes, by_key in ((removed, gone), (added, new_in)):
                for entry in changes:
                    for key in set(_keys(entry, tag)):
                        by_key.setdefault(key, []).append(entry)
            if not gone and not new_in:
                buckets[tag] = table
                continue
            new = table.copy()  # a C-level copy of the underlying dict
            for key in gone.keys() | new_in.keys():
                bucket = _edited(new.get(key, ()), gone.get(key, ()), new_in.get(key, ()), _order)
                if bucket:
                    new[key] = bucket
                else:
                    new.pop(key, None)
            buckets[tag] = MappingProxyType(new)

        names = _edited(
            self.names,
            [n for e in removed for n in _name_rows(e)],
            [n for e in added for n in _name_rows(e)],
            _name_order,
            identity=_name_identity,
        )
        return Lookup(entries, MappingProxyType(buckets), names)

    # ------------------------------------------------------------------ candidates
    def candidates(self, query: CompiledQuery) -> Sequence[Entry]:
        """Entries that may match ``query``, in answer order: a superset of the matches.

        The smallest set any applicable lookup gives (all entries when none applies),
        intersected with the next smallest ones while that is cheaper than matching what it
        removes: station CT01 (700 entries) and today (600) leave the 50 of CT01 today.
        """
        options = sorted(self._options(query), key=len)
        if not options:
            return self.entries
        best = options[0]
        for other in options[1:]:
            if len(best) <= INTERSECT_ABOVE or len(other) > INTERSECT_RATIO * len(best):
                break
            keep = {id(e) for e in other}
            best = [e for e in best if id(e) in keep]
        return best

    def _options(self, query: CompiledQuery) -> Iterable[Sequence[Entry]]:
        for level, item_query in ((False, query.top), (True, query.sps)):
            yield from self._value_options(level, item_query)
        for date_tag, time_tag, window in query.sps.date_times:
            if (date_tag, time_tag) == (START_DATE, START_TIME):
                lo = window.lo[:8] if window.lo else None
                hi = window.hi[:8] if window.hi else None
                yield self._dates(lo, hi)
        for tag, matcher in query.top.values:
            if tag == PATIENT_NAME:
                prefixes = _prefixes(matcher)
                if prefixes is not None:
                    yield _in_order(e for p in prefixes for e in self._name_prefix(p))

    def _value_options(self, sps: bool, item_query: ItemQuery) -> Iterable[Sequence[Entry]]:
        for tag, matcher in item_query.values:
            if BUCKETED.get(tag) is not sps:
                continue
            table = self.buckets[tag]
            if isinstance(matcher, AnyOf) and not matcher.person_name:
                keys = list(matcher.alternatives)
                if len(keys) == 1:
                    yield table.get(keys[0], ())
                else:
                    yield _in_order(e for k in keys for e in table.get(k, ()))
            elif tag == START_DATE and isinstance(matcher, Range):
                yield self._dates(matcher.lo, matcher.hi)
            elif tag == START_DATE and isinstance(matcher, AnyMatcher):
                ranges = [m for m in matcher.matchers if isinstance(m, Range)]
                if len(ranges) == len(matcher.matchers):
                    yield _in_order(e for r in ranges for e in self._dates(r.lo, r.hi))

    def _dates(self, lo: str | None, hi: str | None) -> Sequence[Entry]:
        first = 0 if lo is None else bisect.bisect_left(self.dates, lo[:8])
        last = len(self.dates) if hi is None else bisect.bisect_right(self.dates, hi[:8])
        keys = self.dates[first:last]
        table = self.buckets[START_DATE]
        if len(keys) == 1:
            return table[keys[0]]
        return _in_order(e for k in keys for e in table[k])

    def _name_prefix(self, prefix: str) -> Iterable[Entry]:
        key = lambda n: n[0]  # noqa: E731
        first = bisect.bisect_left(self.names, prefix, key=key)
        last = bisect.bisect_left(self.names, prefix + _NAME_END, key=key)
        return (n[2] for n in self.names[first:last])


_Plan = tuple[tuple[dict[str, list[Entry]], int], ...]


class LookupBuilder:
    """A lookup built a batch of entries at a time (while worker processes read the next
    files, see :mod:`wlmserver.store.workers`), then sorted once: what is left to do when the
    last file is read is the sorting, not the bucketing (2.8 s at 100,000 entries)."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._buckets: dict[int, dict[str, list[Entry]]] = {tag: {} for tag in BUCKETED}
        self._names: list[NameRow] = []
        # per record layout, top level and SPS item apart: (table, value position) of each
        # bucketed attribute it holds (the files of one RIS share a few layouts)
        self._plans: tuple[dict[Layout, _Plan], dict[Layout, _Plan]] = ({}, {})

    def _plan(self, layout: Layout, sps: bool) -> _Plan:
        plans = self._plans[sps]
        plan = plans.get(layout)
        if plan is None:
            plan = plans[layout] = tuple(
                (self._buckets[tag], layout.positions[tag])
                for tag, in_sps in BUCKETED.items()
                if in_sps is sps
                and tag in layout.positions
                and layout.vrs[layout.positions[tag]] != "SQ"
            )
        return plan

    def add(self, entries: Iterable[Entry]) -> None:
        """Take some more entries (of files not taken yet)."""
        added, names, plan_for = self._entries, self._names, self._plan
        top_plans, sps_plans = self._plans
        for entry in entries:
            added.append(entry)
            for record, plans, sps in ((entry.top, top_plans, False), (entry.sps, sps_plans, True)):
                layout, values = record.parts()
                plan = plans.get(layout)
                if plan is None:
                    plan = plan_for(layout, sps)
                for table, i in plan:
                    keys = values[i]
                    if len(keys) == 1:  # nearly always
                        table.setdefault(keys[0], []).append(entry)  # type: ignore[arg-type]
                    else:
                        for key in set(keys):
                            table.setdefault(key, []).append(entry)  # type: ignore[arg-type]
            names.extend((name, entry.order, entry) for name in _names(entry))

    def build(self) -> Lookup:
        """The lookup of every entry taken, each table in answer order.

        The entries are sorted once; every other sort is by their place in that order (an
        int, found in C), and buckets of one entry (most patient IDs and accession numbers)
        are not sorted at all: half a second less at 100,000 entries, all of it after the
        last file is read.
        """
        ordered = tuple(sorted(self._entries, key=_order))
        place = dict(zip(ordered, range(len(ordered)), strict=True)).__getitem__  # by identity
        names = self._names
        names.sort(key=lambda row: place(row[2]))
        names.sort(key=_name)  # stable: by name, then in answer order
        frozen = {}
        for tag, table in self._buckets.items():
            made = dict(zip(table, map(tuple, table.values()), strict=True))
            for key, bucket in made.items():
                if len(bucket) > 1:
                    made[key] = tuple(sorted(bucket, key=place))
            frozen[tag] = MappingProxyType(made)
        return Lookup(ordered, MappingProxyType(frozen), tuple(names))


def _prefixes(matcher: object) -> list[str] | None:
    """The literal prefixes a patient name matcher needs, or None if it has none."""
    if isinstance(matcher, AnyOf) and matcher.fold is not fold_case_and_accents:
        return list(matcher.alternatives)
    if isinstance(matcher, Wildcard) and matcher.fold is not fold_case_and_accents:
        prefixes = []
        for alternative in matcher.alternatives:
            cut = min((alternative.find(c) for c in "*?" if c in alternative), default=-1)
            prefix = alternative if cut < 0 else alternative[:cut]
            if not prefix:
                return None
            prefixes.append(prefix)
        return prefixes
    return None
