"""JSON drop files (``--json-drops``): served like .wl files, validated like ``create``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import StartServer, find

from wlmserver.store.files import WorklistFileError
from wlmserver.store.index import WorklistStore
from wlmserver.store.jsondrop import read_json_drop

ORDER = {
    "PatientName": "Müller^Jürgen",
    "PatientID": "P100",
    "AccessionNumber": "A100",
    "RequestedProcedureDescription": "CT HEAD",
    "ScheduledStationAETitle": "CT01",
    "Modality": "CT",
    "ScheduledProcedureStepStartDate": "20261201",
    "ScheduledProcedureStepStartTime": "0930",
    "ScheduledProcedureStepDescription": "HEAD W/O",
}


def _drop(folder: Path, name: str, content: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.tmp"
    temp.write_text(json.dumps(content), encoding="utf-8")
    os.replace(temp, folder / name)
    return folder / name


def test_entries_from_a_list_with_one_refused(tmp_path: Path) -> None:
    bad = dict(ORDER, AccessionNumber="A2")
    del bad["Modality"]
    path = _drop(tmp_path / "WLM", "orders.json", [ORDER, bad, dict(ORDER, AccessionNumber="A3")])
    result = read_json_drop(path)
    assert [e.top.text(0x00080050) for e in result.entries] == [("A100",), ("A3",)]
    assert [e.item for e in result.entries] == [0, 1]
    (problem,) = result.problems
    assert problem.startswith("entry 2: Modality missing")


@pytest.mark.parametrize(
    ("content", "reason"),
    [('{"PatientName": "DOE', "not valid JSON, cut short?"), ("[1, 2]", "must be an object")],
)
def test_bad_files_say_why(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WorklistFileError, match=reason):
        read_json_drop(path)


def test_only_with_the_option(db: Path) -> None:
    _drop(db / "WLM", "a.json", ORDER)
    plain = WorklistStore(db)
    plain.scan()
    assert plain.folder("WLM") is None or not plain.folder("WLM").entries  # type: ignore[union-attr]
    store = WorklistStore(db, json_drops=True)
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None and len(folder.entries) == 1


def test_a_dropped_json_file_is_answered(start_server: StartServer, db: Path) -> None:
    from pydicom.dataset import Dataset

    server = start_server(json_drops=True)
    _drop(db / "WLM", "order.json", ORDER)
    query = Dataset()
    query.PatientName = ""
    query.PatientID = "P100"
    query.ScheduledProcedureStepSequence = [Dataset()]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        results = find(server.port, query)
        if len(results) == 2:
            break
        time.sleep(0.05)
    (pending, answer), (final, _) = results
    assert (
        pending == 0xFF00
        and final == 0
        and answer is not None
        and str(answer.PatientName) == "Müller^Jürgen"
    )
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "A100.1"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply to read"),
        ("fifo.json", None, "a FIFO (named pipe), not a regular file: not read"),
    ],
)
def test_hostile_drops_are_one_file_not_served(
    db: Path, name: str, content: str | None, reason: str
) -> None:
    """A JSON drop nested 100,000 deep, or a FIFO, is one file not served, with the reason."""
    _drop(db / "WLM", "good.json", ORDER)
    if content is None:
        os.mkfifo(db / "WLM" / name)
    else:
        (db / "WLM" / name).write_text(content, encoding="utf-8")
    store = WorklistStore(db, json_drops=True)
    store.scan()
    folder = store.folder("WLM")
    assert folder is not None and len(folder.entries) == 1
    assert folder.files[name].problem == reason


def test_entries_of_one_order_are_its_steps(tmp_path: Path) -> None:
    """A drop that repeats an order (a CT step, then an MR step) serves both steps, each with
    its own step ID, as ``wlmserver create`` writes them; entries that disagree on the order
    are refused together, naming the attribute."""
    mr = dict(ORDER, Modality="MR", ScheduledStationAETitle="MR01")
    path = _drop(tmp_path / "WLM", "orders.json", [ORDER, mr])
    result = read_json_drop(path)
    assert [e.sps.text(0x00080060) for e in result.entries] == [("CT",), ("MR",)]
    assert [e.sps.text(0x00400009) for e in result.entries] == [("A100.1",), ("A100.2",)]
    assert result.problems == ()
    other = dict(mr, PatientID="P999")
    path = _drop(tmp_path / "WLM", "clash.json", [ORDER, other, dict(ORDER, AccessionNumber="A2")])
    result = read_json_drop(path)
    assert [e.top.text(0x00080050) for e in result.entries] == [("A2",)]
    (problem,) = result.problems
    assert problem.startswith("entries 1, 2: one requested procedure, refused whole")
    assert "differ in PatientID" in problem and "P999" not in problem
