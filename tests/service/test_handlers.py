"""The C-FIND handler with real collaborators and a stand-in pynetdicom event."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import write_wl
from pydicom.dataset import Dataset

from wlmserver.config import Config
from wlmserver.config.profiles import Profile, Profiles
from wlmserver.matching.answers import as_dataset
from wlmserver.matching.encoding import EncodedAnswer
from wlmserver.matching.status import Status
from wlmserver.service.handlers import CANCEL_CHECK_EVERY, handle_find
from wlmserver.store.index import WorklistStore


class FakeEvent:
    """Just what handle_find reads of a pynetdicom event."""

    def __init__(self, identifier: Any, aet: str = "WLM", cancel_after: int | None = None) -> None:
        self._identifier = identifier
        self.checks = 0
        self.cancel_after = cancel_after
        requestor = SimpleNamespace(
            primitive=SimpleNamespace(called_ae_title=aet, calling_ae_title="SCU"),
            ae_title="SCU",
            address="127.0.0.1",
            port=1,
        )
        self.assoc = SimpleNamespace(requestor=requestor)

    @property
    def identifier(self) -> Dataset:
        if isinstance(self._identifier, Exception):
            raise self._identifier
        return self._identifier  # type: ignore[no-any-return]

    @property
    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.cancel_after is not None and self.checks > self.cancel_after


def _store(db: Path, steps: int) -> WorklistStore:
    write_wl(db / "WLM" / "a.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(steps)])
    store = WorklistStore(db)
    store.scan()
    return store


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    return query


def test_cancel_is_checked_before_every_answer(db: Path) -> None:
    store = _store(db, 5)
    responses = list(handle_find(FakeEvent(_query(), cancel_after=2), store, Config(db)))
    assert [s for s, _ in responses] == [Status.PENDING, Status.PENDING, Status.CANCEL]


def test_all_answers_then_success(db: Path) -> None:
    store = _store(db, CANCEL_CHECK_EVERY + 3)
    responses = list(handle_find(FakeEvent(_query()), store, Config(db)))
    assert [s for s, _ in responses].count(Status.PENDING) == CANCEL_CHECK_EVERY + 3
    assert responses[-1] == (Status.SUCCESS, None)


def test_identifier_that_cannot_be_decoded(db: Path) -> None:
    store = _store(db, 1)
    ((status, _),) = list(handle_find(FakeEvent(ValueError("bad bytes")), store, Config(db)))
    assert isinstance(status, Dataset)
    assert status.Status == Status.UNABLE_TO_PROCESS and "bad bytes" in status.ErrorComment


def test_error_comment_fits_lo(db: Path) -> None:
    store = _store(db, 1)
    query = _query()
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20261199-20261299"
    ((status, _),) = list(handle_find(FakeEvent(query), store, Config(db)))
    assert isinstance(status, Dataset) and len(status.ErrorComment) <= 64


# (keyword in the SPS item or at the top, invalid value, the rule the comment must keep whole);
# a key outside the default matching keys is matched by a profile's match-all-keys
INVALID_QUERIES = [
    ("ScheduledProcedureStepStartDate", "2026-12-01", "use YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
    ("ScheduledProcedureStepStartDate", "20261301", "not a calendar date (YYYYMMDD)"),
    ("ScheduledProcedureStepStartDate", "20261202-20261201", "the range starts after it ends"),
    ("ScheduledProcedureStepStartTime", "25", "not a valid time (HH<24, MM<60, SS<61)"),
    ("ScheduledProcedureStepStartTime", "10h", "not a time: use HHMM, HHMMSS or HHMMSS.FFFFFF"),
    ("PatientBirthDate", "1980-01-01", "use YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
    ("StudyInstanceUID", "1.2.3.*", "not a UID list (digits and dots, no wildcards)"),
    ("IssueDateOfImagingServiceRequest", "xx", "not a date: use YYYYMMDD"),
]


MATCH_ALL = Config(Path("."), profiles=Profiles((Profile("default", match_all_keys=True),)))


@pytest.mark.parametrize(("keyword", "value", "rule"), INVALID_QUERIES)
def test_failure_comment_keeps_the_rule_and_the_log_never_the_value(
    db: Path, caplog: pytest.LogCaptureFixture, keyword: str, value: str, rule: str
) -> None:
    store = _store(db, 1)
    query = _query()
    level = query.ScheduledProcedureStepSequence[0] if "ProcedureStep" in keyword else query
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid value
        setattr(level, keyword, value)
    config = dataclasses.replace(MATCH_ALL, data_files_path=db)
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        ((status, _),) = list(handle_find(FakeEvent(query), store, config))
    assert isinstance(status, Dataset)
    assert status.Status == Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    comment = str(status.ErrorComment)
    assert len(comment) <= 64 and comment.endswith(f": {rule}")
    assert value not in comment
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("wlmserver")]
    assert keyword in line and rule in line and "0xA900" in line
    assert value not in line


# return keys only by default (PS3.4 K.2.2.1.1.2): their values are not looked at, so a value
# not valid for the VR does not fail the query, and does not remove the answer
RETURN_KEYS_ONLY = [
    ("IssueDateOfImagingServiceRequest", "xx"),
    ("PatientWeight", "72.5"),  # the entry has no weight: matched, it would not answer
    ("PregnancyStatus", 0),
    ("ScheduledStationName", "NOWHERE"),
]


@pytest.mark.parametrize(("keyword", "value"), RETURN_KEYS_ONLY)
def test_a_return_key_only_is_answered_whatever_its_value(
    db: Path, keyword: str, value: object
) -> None:
    store = _store(db, 1)
    query = _query()
    level = query.ScheduledProcedureStepSequence[0] if "Station" in keyword else query
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(level, keyword, value)
    responses = list(handle_find(FakeEvent(query), store, Config(db)))
    assert [s for s, _ in responses] == [Status.PENDING, Status.SUCCESS]
    answer = responses[0][1]
    if isinstance(answer, EncodedAnswer):  # the fast path, once a server installed it
        answer = as_dataset(answer.answer_elements)
    assert isinstance(answer, Dataset)
    assert keyword in (answer.ScheduledProcedureStepSequence[0] if "Station" in keyword else answer)
