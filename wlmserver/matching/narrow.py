"""Narrow a compiled query with constraints the requestor did not send (modality profiles).

A profile may narrow a query whose ScheduledStationAETitle is universal to the calling
station, and one whose ScheduledProcedureStepStartDate is universal to a date window. The
constraints are added to the query's SPS item constraints only: the identifier, and so the
keys returned, stay the requestor's (PS3.4 K.6.1.2: answers hold the requested keys).
"""

from __future__ import annotations

import dataclasses

from wlmserver.matching.keys import describe_tag
from wlmserver.matching.primitives import AnyOf, Matcher, compile_value
from wlmserver.matching.query import CompiledQuery

STATION_AET = 0x00400001
SPS_START_DATE = 0x00400002


def _constrains(query: CompiledQuery, tag: int) -> bool:
    sps = query.sps
    return any(t == tag for t, _ in sps.values) or any(d == tag for d, _, _ in sps.date_times)


def narrow(
    query: CompiledQuery,
    *,
    station: str | None = None,
    dates: tuple[str, str] | None = None,
) -> tuple[CompiledQuery, tuple[str, ...]]:
    """Add a station and a date window to a query that leaves them universal.

    Parameters
    ----------
    query : CompiledQuery
        The requestor's query.
    station : str or None
        Match only steps whose ScheduledStationAETitle is this (exactly; a ``*`` in a calling
        AE title is not a wildcard here) when the query leaves the key universal.
    dates : tuple of str or None
        ``(first, last)`` as YYYYMMDD: match only steps scheduled on these days when the query
        leaves ScheduledProcedureStepStartDate universal.

    Returns
    -------
    tuple
        The narrowed query, and one note per constraint added (for logs and ``explain``).

    Examples
    --------
    >>> from pydicom import Dataset
    >>> from wlmserver.matching.query import compile_query
    >>> q, notes = narrow(compile_query(Dataset()), station="CT01", dates=("20261201", "20261203"))
    >>> for note in notes:
    ...     print(note)
    ScheduledStationAETitle (0040,0001) = CT01
    ScheduledProcedureStepStartDate (0040,0002) = 20261201-20261203
    """
    added: list[tuple[int, Matcher]] = []
    notes: list[str] = []
    if station is not None and station.strip() and not _constrains(query, STATION_AET):
        added.append((STATION_AET, AnyOf(frozenset({station.strip()}))))
        notes.append(f"{describe_tag(STATION_AET)} = {station.strip()}")
    if dates is not None and not _constrains(query, SPS_START_DATE):
        first, last = dates
        window = f"{first}-{last}"
        matcher = compile_value("DA", window)
        assert matcher is not None
        added.append((SPS_START_DATE, matcher))
        notes.append(f"{describe_tag(SPS_START_DATE)} = {window}")
    if not added:
        return query, ()
    sps = dataclasses.replace(query.sps, values=query.sps.values + tuple(added))
    return dataclasses.replace(query, sps=sps), tuple(notes)
