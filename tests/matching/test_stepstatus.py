"""Step status as answered: the file's, or what an MPPS reported; hidden statuses."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from wlmserver.matching.entry import Entry
from wlmserver.matching.mpps import Performed, PerformedSteps, PpsStatus, StepKey
from wlmserver.matching.query import compile_query
from wlmserver.matching.record import Record
from wlmserver.matching.stepstatus import (
    DEFAULT_HIDDEN,
    SPS_STATUS,
    StatusView,
    asks_for_status,
    parse_statuses,
    step_key,
)

STEP = StepKey("1.2.3", "RP1", "SPS1", "ACC1")


def _entry(status: str | None = None, sps_id: str = "SPS1") -> Entry:
    top = Record(
        [
            (0x0020000D, "UI", (STEP.study_instance_uid,)),
            (0x00401001, "SH", (STEP.requested_procedure_id,)),
            (0x00080050, "SH", (STEP.accession_number,)),
        ]
    )
    elements = [(0x00400009, "SH", (sps_id,)), (0x00080060, "CS", ("CT",))]
    if status is not None:
        elements.append((SPS_STATUS, "CS", (status,)))
    return Entry("/db/WLM/a.wl", 0, top, Record(elements), (), ("x", "a.wl", 0))


def _performed(status: PpsStatus, uid: str = "1.9.1", started: str = "1") -> Performed:
    return Performed(uid, status, (STEP,), started=started)


@pytest.mark.parametrize(
    ("reported", "answered"),
    [
        (PpsStatus.IN_PROGRESS, "STARTED"),
        (PpsStatus.COMPLETED, "COMPLETED"),
        (PpsStatus.DISCONTINUED, "DISCONTINUED"),
    ],
)
def test_a_reported_status_replaces_the_files(reported: PpsStatus, answered: str) -> None:
    view = StatusView(PerformedSteps([_performed(reported)]), frozenset())
    entry = _entry("SCHEDULED")
    seen = view.seen(entry)
    assert seen is not None and seen.sps.text(SPS_STATUS) == (answered,)
    assert entry.sps.text(SPS_STATUS) == ("SCHEDULED",)  # the index's entry is untouched
    assert seen.sps.text(0x00080060) == ("CT",) and seen.top is entry.top


def test_hidden_statuses_whether_reported_or_in_the_file() -> None:
    nothing = PerformedSteps()
    assert StatusView(nothing, DEFAULT_HIDDEN).seen(_entry("COMPLETED")) is None
    assert StatusView(nothing, DEFAULT_HIDDEN).seen(_entry("completed")) is None
    kept = _entry("SCHEDULED")
    assert StatusView(nothing, DEFAULT_HIDDEN).seen(kept) is kept
    done = PerformedSteps([_performed(PpsStatus.COMPLETED)])
    assert StatusView(done, DEFAULT_HIDDEN).seen(_entry()) is None
    assert StatusView(done, DEFAULT_HIDDEN).seen(_entry(sps_id="SPS2")) is not None  # another
    started = StatusView(PerformedSteps([_performed(PpsStatus.IN_PROGRESS)]), DEFAULT_HIDDEN)
    assert started.seen(_entry("COMPLETED")) is not None  # the MPPS is newer news


def test_the_newest_mpps_says_the_status() -> None:
    again = PerformedSteps(
        [
            _performed(PpsStatus.DISCONTINUED, "1.9.1", "20261202090000"),
            _performed(PpsStatus.IN_PROGRESS, "1.9.2", "20261202100000"),
        ]
    )
    seen = StatusView(again, DEFAULT_HIDDEN).seen(_entry())
    assert seen is not None and seen.sps.text(SPS_STATUS) == ("STARTED",)


def test_a_query_asking_for_a_status_sees_hidden_ones() -> None:
    asking = Dataset()
    asking.ScheduledProcedureStepSequence = [Dataset()]
    asking.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "COMPLETED"
    plain = Dataset()
    plain.ScheduledProcedureStepSequence = [Dataset()]
    plain.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
    assert asks_for_status(compile_query(asking))
    assert not asks_for_status(compile_query(plain))  # only returned, not matched


def test_step_key_and_statuses_setting() -> None:
    assert step_key(_entry()) == STEP
    assert parse_statuses("completed discontinued") == DEFAULT_HIDDEN
    assert parse_statuses("") == frozenset() == parse_statuses("NONE")
    with pytest.raises(ValueError, match="'DONE' is not a step status"):
        parse_statuses("COMPLETED,DONE")
