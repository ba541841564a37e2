"""Shared fixtures: worklist files made on the fly, an in-process server on a free port, and a
pynetdicom worklist client."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from wlmserver.config import Config
from wlmserver.service.server import MODALITY_WORKLIST_FIND, VERIFICATION, WorklistServer

TOP_DEFAULTS: dict[str, Any] = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID001",
    "PatientBirthDate": "19800101",
    "PatientSex": "F",
    "AccessionNumber": "ACC001",
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.9999.1",
    "RequestedProcedureID": "RP001",
    "RequestedProcedureDescription": "CT HEAD",
    "RequestedProcedurePriority": "ROUTINE",
    "ReferringPhysicianName": "HOUSE^GREGORY",
}
SPS_DEFAULTS: dict[str, Any] = {
    "ScheduledStationAETitle": "CT01",
    "ScheduledProcedureStepStartDate": "20261122",
    "ScheduledProcedureStepStartTime": "101500",
    "Modality": "CT",
    "ScheduledPerformingPhysicianName": "WHO^JOHN",
    "ScheduledProcedureStepDescription": "HEAD W/O CONTRAST",
    "ScheduledProcedureStepID": "SPS001",
    "ScheduledStationName": "CTROOM1",
}


#: One order as a RIS gives it, with keywords as keys (``wlmserver create``'s flat form).
ORDER = {
    "PatientName": "Müller^Jürgen",
    "PatientID": "P100",
    "AccessionNumber": "A100",
    "RequestedProcedureDescription": "CT HEAD",
    "ScheduledStationAETitle": ["CT01", "CT02"],
    "Modality": "CT",
    "ScheduledProcedureStepStartDate": "20261201",
    "ScheduledProcedureStepStartTime": "0930",
    "ScheduledProcedureStepDescription": "HEAD W/O",
}


def make_dataset(sps: list[dict[str, Any]] | None = None, **top: Any) -> Dataset:
    """A worklist entry: the defaults above, overridden by keyword; ``None`` removes a key."""
    ds = Dataset()
    values = {**TOP_DEFAULTS, **top}
    charset = values.pop("SpecificCharacterSet", None)
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    items = []
    for overrides in sps if sps is not None else [{}]:
        item = Dataset()
        for keyword, value in {**SPS_DEFAULTS, **overrides}.items():
            if value is not None:
                setattr(item, keyword, value)
        items.append(item)
    ds.ScheduledProcedureStepSequence = items
    return ds


#: The keys of the ready-made worklist query of Node.js dcmjs-dimse
#: (``CFindRequest.createWorklistFindRequest``), all zero-length but Pregnancy Status: a US
#: value it cannot leave empty, so it sends 0. ``dcmjs_query`` builds it.
DCMJS_TOP_KEYS = [
    "PatientID",
    "PatientName",
    "IssuerOfPatientID",
    "PatientSex",
    "PatientWeight",
    "PatientBirthDate",
    "MedicalAlerts",
    "Allergies",
    "PatientComments",
    "SpecialNeeds",
    "PatientState",
    "CurrentPatientLocation",
    "InstitutionName",
    "AdmissionID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "AdmittingDiagnosesDescription",
    "RequestingPhysician",
    "StudyInstanceUID",
    "StudyDescription",
    "StudyID",
    "ReasonForTheRequestedProcedure",
    "StudyDate",
    "StudyTime",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
]
DCMJS_TOP_SEQUENCES = (
    "RequestedProcedureCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
)
DCMJS_SPS_KEYS = [
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepID",
    "RequestedContrastAgent",
    "PreMedication",
    "AnatomicalOrientationType",
]


def dcmjs_query(pregnancy_status: int | None = 0, **values: str) -> Dataset:
    """dcmjs-dimse's worklist query (its keys as it sends them), with ``values`` set (SPS keys
    go into the SPS item); ``pregnancy_status=None`` leaves Pregnancy Status zero-length."""
    query = Dataset()
    for keyword in DCMJS_TOP_KEYS:
        setattr(query, keyword, values.get(keyword, ""))
    for keyword in DCMJS_TOP_SEQUENCES:
        setattr(query, keyword, [])
    query.add_new(0x001021C0, "US", pregnancy_status)  # PregnancyStatus
    query.QueryRetrieveLevel = ""
    item = Dataset()
    for keyword in DCMJS_SPS_KEYS:
        setattr(item, keyword, values.get(keyword, ""))
    item.ScheduledProtocolCodeSequence = []
    query.ScheduledProcedureStepSequence = [item]
    return query


#: One scheduled step as an MPPS names it (Scheduled Step Attributes Sequence item).
STEP_DEFAULTS: dict[str, Any] = {
    "StudyInstanceUID": TOP_DEFAULTS["StudyInstanceUID"],
    "ReferencedStudySequence": [],
    "AccessionNumber": TOP_DEFAULTS["AccessionNumber"],
    "RequestedProcedureID": TOP_DEFAULTS["RequestedProcedureID"],
    "RequestedProcedureDescription": "CT HEAD",
    "ScheduledProcedureStepID": SPS_DEFAULTS["ScheduledProcedureStepID"],
    "ScheduledProcedureStepDescription": "HEAD W/O CONTRAST",
    "ScheduledProtocolCodeSequence": [],
}
#: An N-CREATE attribute list with every Type 1 and 2 attribute of PS3.4 Table F.7.2-1.
MPPS_DEFAULTS: dict[str, Any] = {
    "PatientName": TOP_DEFAULTS["PatientName"],
    "PatientID": TOP_DEFAULTS["PatientID"],
    "PatientBirthDate": TOP_DEFAULTS["PatientBirthDate"],
    "PatientSex": TOP_DEFAULTS["PatientSex"],
    "ReferencedPatientSequence": [],
    "PerformedProcedureStepID": "PPS001",
    "PerformedStationAETitle": "CT01",
    "PerformedStationName": "CTROOM1",
    "PerformedLocation": "",
    "PerformedProcedureStepStartDate": "20261122",
    "PerformedProcedureStepStartTime": "101700",
    "PerformedProcedureStepStatus": "IN PROGRESS",
    "PerformedProcedureStepDescription": "",
    "PerformedProcedureTypeDescription": "",
    "ProcedureCodeSequence": [],
    "PerformedProcedureStepEndDate": "",
    "PerformedProcedureStepEndTime": "",
    "Modality": "CT",
    "StudyID": "",
    "PerformedProtocolCodeSequence": [],
    "PerformedSeriesSequence": [],
}
SERIES_DEFAULTS: dict[str, Any] = {
    "PerformingPhysicianName": "",
    "ProtocolName": "HEAD",
    "OperatorsName": "",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.10.9999.1.1",
    "SeriesDescription": "",
    "RetrieveAETitle": "",
    "ReferencedImageSequence": [],
    "ReferencedNonImageCompositeSOPInstanceSequence": [],
}


def _fill(ds: Dataset, defaults: dict[str, Any], overrides: dict[str, Any]) -> Dataset:
    for keyword, value in {**defaults, **overrides}.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def make_mpps(steps: list[dict[str, Any]] | None = None, **top: Any) -> Dataset:
    """An MPPS N-CREATE attribute list: the defaults above, overridden by keyword (``None``
    removes a key); ``steps``: one Scheduled Step Attributes item per dict (default one)."""
    ds = _fill(Dataset(), MPPS_DEFAULTS, top)
    ds.ScheduledStepAttributesSequence = [
        _fill(Dataset(), STEP_DEFAULTS, step) for step in (steps if steps is not None else [{}])
    ]
    return ds


def make_final(status: str = "COMPLETED", series: int = 1, **top: Any) -> Dataset:
    """An N-SET modification list ending a step: status, end date and time, ``series``
    Performed Series Sequence items; overridden by keyword (``None`` removes a key)."""
    ds = _fill(
        Dataset(),
        {
            "PerformedProcedureStepStatus": status,
            "PerformedProcedureStepEndDate": "20261122",
            "PerformedProcedureStepEndTime": "103000",
        },
        top,
    )
    if "PerformedSeriesSequence" not in top:
        ds.PerformedSeriesSequence = [
            _fill(
                Dataset(),
                SERIES_DEFAULTS,
                {"SeriesInstanceUID": f"1.2.826.0.1.3680043.10.9999.2.{n}"},
            )
            for n in range(1, series + 1)
        ]
    return ds


def write_wl(path: Path, ds: Dataset | None = None, **kwargs: Any) -> Path:
    """Write a worklist file as dump2dcm would (Part 10, explicit VR little endian)."""
    ds = ds if ds is not None else make_dataset(**kwargs)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module, registered (so its worker processes can pickle)."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An empty database root with one AE folder, ``WLM``."""
    root = tmp_path / "db"
    (root / "WLM").mkdir(parents=True)
    return root


StartServer = Callable[..., WorklistServer]


@pytest.fixture
def start_server(db: Path) -> Iterator[StartServer]:
    """Start a real server in-process on a free loopback port; always stopped afterwards."""
    servers: list[WorklistServer] = []

    def start(root: Path | None = None, **overrides: Any) -> WorklistServer:
        overrides.setdefault("rescan_interval", 0)
        config = Config(data_files_path=root or db, port=0, bind="127.0.0.1", **overrides)
        server = WorklistServer(config)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def find(
    port: int,
    identifier: Dataset,
    aet: str = "WLM",
    transfer_syntax: str = ExplicitVRLittleEndian,
    cancel_after: int | None = None,
) -> list[tuple[int, Dataset | None]]:
    """Send one C-FIND over a new association; return ``(status, identifier)`` per response."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established, f"association to {aet} not established"
    results: list[tuple[int, Dataset | None]] = []
    try:
        responses = assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND)
        for status, answer in responses:
            assert status is not None, "no response (timeout or abort)"
            results.append((int(status.Status), answer if answer is not None else status))
            if cancel_after is not None and len(results) == cancel_after:
                assoc.send_c_cancel(1, query_model=MODALITY_WORKLIST_FIND)
    finally:
        assoc.release()
    return results


def echo(port: int, aet: str = "WLM") -> int:
    """Send a C-ECHO; return its status."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture(autouse=True)
def own_cache_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test's servers (in-process ``main()`` and subprocesses alike, which inherit the
    environment) keep their default index cache in a folder of the test's own, never in the
    user's ``~/.cache`` nor in one another test left behind."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    return folder / "wlmserver"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves server or watcher threads running."""
    before = set(threading.enumerate())
    yield
    new = [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith(("wlmserver", "AcceptorThread"))
    ]
    for thread in new:  # a released association's thread ends a moment after the release
        thread.join(timeout=5)
    leaked = [t for t in new if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


def until(condition: Callable[[], object], seconds: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass (a bound, not a wait)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start_wlmserver(args: list[str]) -> tuple[subprocess.Popen[str], int, str]:
    """``python -m wlmserver args`` as a user starts it: the process, the port its ready line
    names and that line (stop it with :func:`stop_wlmserver`)."""
    return start_command([sys.executable, "-m", "wlmserver", *args])


def start_command(
    command: list[str], cwd: Path | None = None
) -> tuple[subprocess.Popen[str], int, str]:
    """Start a server command (``wlmserver ...``, ``python -m wlmserver ...``): the process,
    the port its ready line names and that line."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"on port (\d+)", line)
    if not found:
        process.kill()
        raise AssertionError(f"no ready line: {line!r} {process.communicate(timeout=10)[1]}")
    return process, int(found.group(1)), line


def stop_wlmserver(process: subprocess.Popen[str]) -> str:
    """SIGTERM, as systemd stops it; its stderr (the log). It must exit 0."""
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    return err


def documentation(page: str, section: str) -> list[tuple[str, str]]:
    """``(name, text)`` of ``docs/<page>``, and of README.md while it still holds ``section``:
    the text the documentation took from the README, checked wherever it is (the README
    shrinks to a first visit's worth, and then only the page holds it)."""
    root = Path(__file__).resolve().parent.parent
    texts = [(f"docs/{page}", (root / "docs" / page).read_text(encoding="utf-8"))]
    readme = (root / "README.md").read_text(encoding="utf-8")
    if section in readme:
        texts.append(("README.md", readme))
    return texts


def documented(page: str, section: str) -> list[Any]:
    """:func:`documentation` as the parameters ``(name, text)`` of a test, named by file."""
    return [pytest.param(name, text, id=name) for name, text in documentation(page, section)]


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw sockets a test opens (``sockets.append(sock)``), closed afterwards."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def start_mpps(tmp_path: Path) -> Iterator[Callable[..., WorklistServer]]:
    """Start an MPPS server: ``start_mpps("wlm", forward_to=port)`` forwards to
    ``RIS@127.0.0.1:port``; ``start_mpps("ris", port=port)`` is the RIS (further keywords are
    Config fields). Each has its own database root under tmp_path; stopped afterwards (a
    stopped one may be started again under the same name)."""
    from wlmserver.config.forward import ForwardTarget
    from wlmserver.service.forwarder import Backoff

    servers: list[WorklistServer] = []

    def run(name: str, port: int = 0, forward_to: int | None = None, **options: Any) -> Any:
        root = tmp_path / name
        (root / ("WLM" if forward_to is not None else "RIS")).mkdir(parents=True, exist_ok=True)
        config = Config(
            data_files_path=root,
            port=port,
            bind="127.0.0.1",
            rescan_interval=0,
            mpps_folder=tmp_path / f"{name}-mpps",
            mpps_forward=(
                ForwardTarget("RIS", "127.0.0.1", forward_to) if forward_to is not None else None
            ),
            **options,
        )
        server = WorklistServer(
            config, forward_backoff=Backoff(0.05, 0.2), forward_idle_release=0.2
        )
        server.start()
        servers.append(server)
        return server

    yield run
    for server in reversed(servers):  # the forwarding one first: it releases towards the RIS
        server.stop()
