"""Narrowing a query for a modality profile: only where the query leaves a key universal."""

from __future__ import annotations

import datetime

import pytest
from pydicom import Dataset

from wlmserver.config.profiles import NO_PROFILE, Profile, Profiles
from wlmserver.matching.narrow import SPS_START_DATE, STATION_AET, narrow
from wlmserver.matching.query import compile_query


def _query(**sps: str) -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    item = Dataset()
    for keyword, value in sps.items():
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    return ds


@pytest.mark.parametrize("station", [None, "", "*"])
def test_a_universal_station_is_narrowed(station: str | None) -> None:
    ds = _query() if station is None else _query(ScheduledStationAETitle=station)
    query, notes = narrow(compile_query(ds), station="CT01")
    assert notes == ("ScheduledStationAETitle (0040,0001) = CT01",)
    (added,) = [m for t, m in query.sps.values if t == STATION_AET]
    assert added(("CT01",)) and not added(("CT02",)) and added(("CT02", "CT01"))


def test_a_station_in_the_query_is_left_alone() -> None:
    compiled = compile_query(_query(ScheduledStationAETitle="MR*"))
    query, notes = narrow(compiled, station="CT01")
    assert query is compiled and notes == ()


def test_a_calling_ae_title_with_a_star_is_not_a_wildcard() -> None:
    query, _ = narrow(compile_query(_query()), station="CT*")
    (added,) = [m for t, m in query.sps.values if t == STATION_AET]
    assert added(("CT*",)) and not added(("CT01",))


def test_a_date_window_only_where_the_date_is_universal() -> None:
    query, notes = narrow(compile_query(_query()), dates=("20261201", "20261203"))
    (added,) = [m for t, m in query.sps.values if t == SPS_START_DATE]
    assert added(("20261202",)) and not added(("20261204",))
    assert notes == ("ScheduledProcedureStepStartDate (0040,0002) = 20261201-20261203",)
    for given in (
        _query(ScheduledProcedureStepStartDate="20260101"),
        _query(ScheduledProcedureStepStartDate="20260101", ScheduledProcedureStepStartTime="09-"),
    ):
        compiled = compile_query(given)
        assert narrow(compiled, dates=("20261201", "20261203")) == (compiled, ())


def test_narrowing_leaves_the_returned_keys_alone() -> None:
    compiled = compile_query(_query())
    query, _ = narrow(compiled, station="CT01", dates=("20261201", "20261201"))
    assert query.identifier is compiled.identifier and query.sps_keys is compiled.sps_keys


def test_profiles_are_chosen_in_order_with_a_default() -> None:
    first = Profile("first", ("CT0?",), station_filter=True)
    second = Profile("second", ("CT*",), omit_empty_optional=True)
    fallback = Profile("default", date_window=(0, 0))
    profiles = Profiles((first, second, fallback))
    assert profiles.for_calling("CT01 ") is first
    assert profiles.for_calling("CT10") is second
    assert profiles.for_calling("ct01") is fallback  # AE titles are case-sensitive
    assert Profiles((first,)).for_calling("MR01") is NO_PROFILE
    assert NO_PROFILE.is_neutral and not fallback.is_neutral
    assert fallback.dates(datetime.date(2026, 2, 28)) == ("20260228", "20260228")
