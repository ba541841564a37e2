"""Retention policy: which steps are past retention, by their scheduled start date."""

from __future__ import annotations

from datetime import date

import pytest

from wlmserver.matching.entry import Entry
from wlmserver.matching.record import Record
from wlmserver.matching.retention import SPS_START_DATE, RetentionPolicy, scheduled_date

TODAY = date(2026, 11, 22)


def _step(*dates: str, vr: str = "DA") -> Entry:
    sps = Record([(SPS_START_DATE, vr, dates)])
    return Entry("x.wl", 0, Record([]), sps, (), (dates[0] if dates else "", "x.wl", 0))


# days, start date values, hidden on TODAY
ROWS = [
    (30, ("20261023",), False),  # exactly 30 days ago: kept
    (30, ("20261022",), True),  # 31 days ago: hidden
    (30, ("20261122",), False),  # today
    (30, ("20270101",), False),  # future
    (1, ("20261121",), False),  # yesterday, with 1 day: kept
    (1, ("20261120",), True),
    (30, ("19990101",), True),
    (30, (" 20250101 ",), True),  # padding ignored
    (30, ("20250101", "20270101"), True),  # the first value counts (VM 1)
    (30, (), False),  # no start date: never hidden
    (30, ("",), False),
    (30, ("20251301",), False),  # not a calendar date
    (30, ("2025-01-01",), False),  # not YYYYMMDD
    (30, ("２０２５０１０１",), False),  # not ASCII digits
    (None, ("19990101",), False),  # no retention: nothing hidden
]


@pytest.mark.parametrize(("days", "dates", "hidden"), ROWS)
def test_hides(days: int | None, dates: tuple[str, ...], hidden: bool) -> None:
    assert RetentionPolicy(days).hides(_step(*dates), TODAY) is hidden


def test_the_boundary_moves_with_today() -> None:
    step = _step("20261023")
    policy = RetentionPolicy(30)
    assert not policy.hides(step, date(2026, 11, 22))
    assert policy.hides(step, date(2026, 11, 23))


def test_days_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetentionPolicy(0)


def test_hidden_and_expires_file() -> None:
    old, current, undated = _step("20250101"), _step("20261201"), _step()
    policy = RetentionPolicy(30)
    assert policy.hidden([old, current, undated], TODAY) == [old]
    assert policy.expires_file([old, _step("20250102")], TODAY)
    assert not policy.expires_file([old, current], TODAY)
    assert not policy.expires_file([old, undated], TODAY)  # an undated step keeps its file
    assert not policy.expires_file([], TODAY)
    assert not RetentionPolicy(None).expires_file([old], TODAY)


def test_scheduled_date_reads_the_sps_item_only() -> None:
    top_only = Entry(
        "x.wl", 0, Record([(SPS_START_DATE, "DA", ("20250101",))]), Record([]), (), ("", "x.wl", 0)
    )
    assert scheduled_date(top_only) is None
    assert scheduled_date(_step("20250101")) == date(2025, 1, 1)
