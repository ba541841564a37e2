"""Retention end to end: a server started with ``--retention-days`` does not answer old steps.

Hiding is the C-FIND handler's (``config.retention.hides(entry, today)``); moving files is the
retention runs' (:mod:`wlmserver.store.retention`).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from conftest import StartServer, find, until, write_wl
from pydicom.dataset import Dataset

from wlmserver.matching.status import Status

PENDING = int(Status.PENDING)


def _days_ago(days: int) -> str:
    return (date.today() - timedelta(days=days)).strftime("%Y%m%d")


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepStartDate = ""
    query.ScheduledProcedureStepSequence = [item]
    return query


def _answered(port: int) -> list[str]:
    return sorted(
        a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
        for s, a in find(port, _query())
        if s == PENDING and a is not None
    )


def _aged(db: Path) -> None:
    def step(sps_id: str, days: int) -> dict[str, str]:
        return {
            "ScheduledProcedureStepID": sps_id,
            "ScheduledProcedureStepStartDate": _days_ago(days),
        }

    write_wl(db / "WLM" / "old.wl", sps=[step("OLD", 31)])
    write_wl(db / "WLM" / "edge.wl", AccessionNumber="A2", sps=[step("EDGE", 30)])
    write_wl(
        db / "WLM" / "mixed.wl", AccessionNumber="A3", sps=[step("MIXOLD", 400), step("MIXNEW", 0)]
    )


def test_c_find_does_not_return_steps_past_retention(start_server: StartServer, db: Path) -> None:
    _aged(db)
    server = start_server(retention_days=30)
    # exactly 30 days ago is kept; 31 days ago is hidden; a file's current step still served
    assert _answered(server.port) == ["EDGE", "MIXNEW"]
    assert (db / "WLM" / "old.wl").exists()  # no archive folder: files stay


def test_without_retention_every_step_is_answered(start_server: StartServer, db: Path) -> None:
    _aged(db)
    server = start_server()
    assert _answered(server.port) == ["EDGE", "MIXNEW", "MIXOLD", "OLD"]


def test_archive_folder_receives_whole_files_at_start(
    start_server: StartServer, db: Path, tmp_path: Path
) -> None:
    _aged(db)
    archive = tmp_path / "archive"
    start_server(retention_days=30, archive_folder=archive)
    # a move links the archived copy, then unlinks the original: wait for both
    assert until(
        lambda: (archive / "WLM" / "old.wl").exists() and not (db / "WLM" / "old.wl").exists()
    )
    assert sorted(p.name for p in (db / "WLM").iterdir()) == ["edge.wl", "mixed.wl"]
