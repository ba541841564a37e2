"""Lookups give a superset of the matches: candidates + exact matching == a full scan, on random
stores and random queries; incremental replacement == building from scratch."""

from __future__ import annotations

import copy
import random

import pytest
from pydicom.dataset import Dataset

from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import DEFAULT_MATCHING, MatchingKeys
from wlmserver.matching.primitives import sortable_instant
from wlmserver.matching.query import QueryError, compile_query
from wlmserver.matching.record import Record
from wlmserver.store.lookup import Lookup

STATIONS = ["CT01", "CT02", "MR01", "US01", "US02", "DX01"]
MODALITIES = ["CT", "MR", "US", "DX"]
NAMES = [
    "NAKAMURA^KENJI",
    "NAKANO^AI",
    "MÜLLER^JÜRGEN",
    "OSEI^ABENA",
    "Yamada^Tarou=山田^太郎",
    "ROSSI",
]
DATES = ["20261120", "20261121", "20261122", "20261123", "20261201"]


def _entry(rng: random.Random, n: int) -> Entry:
    top = Record(
        [
            (0x00100010, "PN", (rng.choice(NAMES),) if rng.random() > 0.05 else ()),
            (0x00100020, "LO", (f"P{rng.randrange(40)}",)),
            (0x00080050, "SH", (f"A{rng.randrange(60)}",) if rng.random() > 0.1 else ()),
        ]
    )
    stations = tuple(rng.sample(STATIONS, rng.choice([1, 1, 1, 2])))
    date = rng.choice(DATES)
    time = f"{rng.randrange(7, 19):02d}{rng.choice(['00', '15', '30', '45'])}"
    sps = Record(
        [
            (0x00400001, "AE", stations),
            (0x00080060, "CS", (rng.choice(MODALITIES),)),
            (0x00400002, "DA", (date,) if rng.random() > 0.05 else ()),
            (0x00400003, "TM", (time,)),
        ]
    )
    order = (sortable_instant(sps.text(0x00400002), (time,)), f"{n:05}.wl", 0)
    return Entry(f"{n:05}.wl", 0, top, sps, (), order)


def _query(rng: random.Random) -> Dataset:
    query = Dataset()
    item = Dataset()
    choices = {
        "PatientID": lambda: f"P{rng.randrange(40)}",
        "AccessionNumber": lambda: rng.choice(
            [f"A{rng.randrange(60)}", f"A{rng.randrange(60)}\\A1"]
        ),
        "PatientName": lambda: rng.choice(
            ["NAKA*", "N*", "MÜLLER^JÜRGEN", "山田*", "*SEI*", "ROSS?", "NAKANO^AI"]
        ),
    }
    sps_choices = {
        "ScheduledStationAETitle": lambda: rng.choice([*STATIONS, "CT01\\US01", "CT*"]),
        "Modality": lambda: rng.choice([*MODALITIES, "CT\\MR"]),
        "ScheduledProcedureStepStartDate": lambda: rng.choice(
            [*DATES, "20261121-20261122", "20261122-", "-20261121", "20261120\\20261201"]
        ),
        "ScheduledProcedureStepStartTime": lambda: rng.choice(["0900-1200", "1200-", "10"]),
    }
    for keyword, make in choices.items():
        if rng.random() < 0.3:
            setattr(query, keyword, make())
    for keyword, make in sps_choices.items():
        if rng.random() < 0.4:
            setattr(item, keyword, make())
    if rng.random() < 0.3:  # as dcmjs-dimse sends it: a return key only, unless a profile says
        query.PregnancyStatus = 0
    if rng.random() < 0.2:
        item.ScheduledStationName = "CTROOM1"
    query.ScheduledProcedureStepSequence = [item]
    return query


def _without_return_keys(query: Dataset) -> Dataset:
    bare = copy.deepcopy(query)
    for level in (bare, bare.ScheduledProcedureStepSequence[0]):
        for keyword in ("PregnancyStatus", "ScheduledStationName"):
            if keyword in level:
                delattr(level, keyword)
    return bare


#: The matching keys of the queries: the default, a profile's match-keys, match-all-keys.
MATCHINGS = [
    DEFAULT_MATCHING,
    DEFAULT_MATCHING,
    MatchingKeys(frozenset({0x001021C0})),  # PregnancyStatus: no entry has it
    MatchingKeys(all_keys=True),
]


@pytest.mark.parametrize("seed", range(20))
def test_candidates_then_matching_equals_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    entries = [_entry(rng, n) for n in range(300)]
    lookup = Lookup.build(entries)
    narrowed = intersected = 0
    for _ in range(60):
        identifier = _query(rng)
        matching = rng.choice(MATCHINGS)
        pn_fold = rng.random() < 0.2
        try:
            query = compile_query(identifier, pn_fold=pn_fold, matching=matching)
        except QueryError:
            continue
        full = [e for e in lookup.entries if query.matches(e)]
        candidates = lookup.candidates(query)
        assert [e for e in candidates if query.matches(e)] == full
        if matching.is_default:  # return keys only narrow nothing, lookups included
            bare = compile_query(_without_return_keys(identifier), pn_fold=pn_fold)
            assert lookup.candidates(bare) == candidates
            assert [e for e in lookup.entries if bare.matches(e)] == full
        narrowed += len(candidates) < len(entries)
        options = [len(o) for o in lookup._options(query)]
        intersected += bool(options) and len(candidates) < min(options)
    assert narrowed > 20  # the lookups are really used
    assert intersected > 3  # and intersected


@pytest.mark.parametrize("seed", range(5))
def test_replace_equals_build(seed: int) -> None:
    rng = random.Random(seed)
    entries = [_entry(rng, n) for n in range(200)]
    lookup = Lookup.build(entries)
    current = list(entries)
    for step in range(30):
        removed = rng.sample(current, rng.randrange(0, 4))
        added = [_entry(rng, 1000 + step * 10 + i) for i in range(rng.randrange(0, 4))]
        current = [e for e in current if all(e is not r for r in removed)] + added
        lookup = lookup.replace(removed, added)
        fresh = Lookup.build(current)
        assert lookup.entries == fresh.entries
        assert {t: dict(b) for t, b in lookup.buckets.items()} == {
            t: dict(b) for t, b in fresh.buckets.items()
        }
        assert [n[:2] for n in lookup.names] == [n[:2] for n in fresh.names]
        assert lookup.dates == fresh.dates


def _assert_same(lookup: Lookup, fresh: Lookup) -> None:
    assert lookup.entries == fresh.entries
    assert {t: dict(b) for t, b in lookup.buckets.items()} == {
        t: dict(b) for t, b in fresh.buckets.items()
    }
    assert [(n[0], n[1], id(n[2])) for n in lookup.names] == [
        (n[0], n[1], id(n[2])) for n in fresh.names
    ]
    assert lookup.dates == fresh.dates


@pytest.mark.parametrize("seed", range(4))
def test_replace_many_at_once_equals_build(seed: int) -> None:
    """Thousands of files changed at once (while the server was down, or a RIS re-export):
    the one-pass path, including entries re-read under the same answer order."""
    rng = random.Random(seed)
    entries = [_entry(rng, n) for n in range(3000)]
    lookup = Lookup.build(entries)
    current = list(entries)
    for step in range(3):
        removed = rng.sample(current, rng.randrange(0, 1500))
        # half of them re-read: same file name, so the same answer order as the old entry
        reread = [_entry(rng, int(e.path[:5])) for e in removed[: len(removed) // 2]]
        added = reread + [_entry(rng, 10_000 + step * 1000 + i) for i in range(rng.randrange(500))]
        gone = {id(e) for e in removed}
        current = [e for e in current if id(e) not in gone] + added
        lookup = lookup.replace(removed, added)
        _assert_same(lookup, Lookup.build(current))


def test_replace_costs_what_the_changes_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys of each change are read a bounded number of times, not once per touched
    bucket (which made 10,000 changes in a folder of 100,000 entries take minutes)."""
    import wlmserver.store.lookup as lookup_module

    rng = random.Random(7)
    entries = [_entry(rng, n) for n in range(4000)]
    lookup = Lookup.build(entries)
    removed = entries[::2]
    added = [_entry(rng, 10_000 + i) for i in range(2000)]
    calls = 0
    real_keys = lookup_module._keys

    def counting(entry: Entry, tag: int) -> tuple[str, ...]:
        nonlocal calls
        calls += 1
        return real_keys(entry, tag)

    monkeypatch.setattr(lookup_module, "_keys", counting)
    replaced = lookup.replace(removed, added)
    changes = len(removed) + len(added)
    assert calls <= 2 * len(lookup_module.BUCKETED) * changes
    gone = {id(e) for e in removed}
    _assert_same(replaced, Lookup.build([e for e in entries if id(e) not in gone] + added))
