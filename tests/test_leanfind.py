"""tools/leanfind.py: the benchmark's raw-socket C-FIND client, against a real server."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from conftest import StartServer, load_tool, write_wl
from pydicom.dataset import Dataset


def _leanfind() -> ModuleType:
    return load_tool("leanfind")


def _query(modality: str = "") -> Dataset:
    query = Dataset()
    query.PatientName = ""
    item = Dataset()
    item.Modality = modality
    item.ScheduledProcedureStepDescription = ""
    query.ScheduledProcedureStepSequence = [item]
    return query


@pytest.fixture
def store(db: Path) -> Path:
    # long descriptions: answers larger than the client's maximum PDU are fragmented
    sps = [
        {"Modality": "CT" if n % 3 else "MR", "ScheduledProcedureStepDescription": "X" * 9000}
        for n in range(40)
    ]
    write_wl(db / "WLM" / "a.wl", sps=sps)
    return db


def test_counts_every_answer_and_the_final_status(start_server: StartServer, store: Path) -> None:
    lean = _leanfind()
    server = start_server()
    outcome = lean.LeanClient(server.port, _query("CT"), called="WLM").find()
    assert (outcome.answers, outcome.status) == (26, 0)
    assert lean.LeanClient(server.port, _query(), called="WLM").find().answers == 40


def test_failure_status_is_reported(start_server: StartServer, store: Path) -> None:
    lean = _leanfind()
    server = start_server()
    query = _query()
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "2026xx01"
    outcome = lean.LeanClient(server.port, query, called="WLM").find()
    assert outcome.answers == 0 and outcome.status >= 0xA000


def test_rejected_association_raises(start_server: StartServer, store: Path) -> None:
    lean = _leanfind()
    server = start_server()
    with pytest.raises(lean.LeanError, match="not accepted"):
        lean.LeanClient(server.port, _query(), called="NOSUCHAE").find()


def test_concurrent_clients(start_server: StartServer, store: Path) -> None:
    lean = _leanfind()
    server = start_server()
    figures = lean.run_clients(server.port, _query("MR"), 3, 0.5, called="WLM")
    assert figures["queries"] >= 3 and figures["errors"] == 0 and figures["qps"] > 0
