"""Interoperability with DCMTK: its findscu and echoscu against wlmserver, and wlmscpfs itself
as the reference on DCMTK's own example worklists and queries (read from the installed
package at test time, never copied into the repository)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer, write_wl
from pydicom import dcmread
from pydicom.dataset import Dataset

from wlmserver.config import Config
from wlmserver.server import WorklistServer

FINDSCU = Path("/usr/bin/findscu")  # not the pynetdicom findscu that may shadow it on PATH
ECHOSCU = Path("/usr/bin/echoscu")
WLMSCPFS = Path("/usr/bin/wlmscpfs")
DUMP2DCM = Path("/usr/bin/dump2dcm")
EXAMPLES = Path("/usr/share/doc/dcmtk/examples")

needs_findscu = pytest.mark.skipif(not FINDSCU.exists(), reason="DCMTK findscu not installed")
needs_reference = pytest.mark.skipif(
    not (WLMSCPFS.exists() and DUMP2DCM.exists() and (EXAMPLES / "wlistqry").is_dir()),
    reason="DCMTK wlmscpfs, dump2dcm or its examples not installed",
)
PENDING = re.compile(r"Find Response: \d+ \(Pending\)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on port {port}")


def findscu(port: int, *args: str, aet: str = "WLM") -> subprocess.CompletedProcess[str]:
    """Run DCMTK's findscu -W verbosely (its output goes to stderr and stdout)."""
    return subprocess.run(
        [str(FINDSCU), "-W", "-v", "-aec", aet, "127.0.0.1", str(port), *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # it prints values in their own character sets
        timeout=60,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _extract(port: int, out: Path, *keys: str, aet: str = "WLM") -> list[Dataset]:
    """Query with findscu -X and read the answer files back with pydicom."""
    out.mkdir(parents=True, exist_ok=True)
    result = findscu(port, "-X", "-od", str(out), *[a for k in keys for a in ("-k", k)], aet=aet)
    assert result.returncode == 0, _output(result)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


# --------------------------------------------------------------------------- DCMTK examples
@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """DCMTK's example database and queries, converted with dump2dcm."""
    root = tmp_path_factory.mktemp("dcmtk")
    folder = root / "db" / "OFFIS"
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()  # wlmscpfs requires it
    for dump in sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump")):
        subprocess.run(
            [str(DUMP2DCM), "-q", str(dump), str(folder / f"{dump.stem}.wl")], check=True
        )
    queries = []
    for n in range(13):
        dump = EXAMPLES / "wlistqry" / f"wlistqry{n}.dump"
        target = root / f"wlistqry{n}.dcm"
        subprocess.run([str(DUMP2DCM), "-q", str(dump), str(target)], check=True)
        queries.append(target)
    return root / "db", queries


@pytest.fixture(scope="module")
def reference_port(examples: tuple[Path, list[Path]]) -> Iterator[int]:
    port = _free_port()
    process = subprocess.Popen(
        [str(WLMSCPFS), "-dfp", str(examples[0]), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def wlmserver_port(examples: tuple[Path, list[Path]]) -> Iterator[int]:
    config = Config(data_files_path=examples[0], port=0, bind="127.0.0.1", rescan_interval=0)
    with WorklistServer(config) as server:
        yield server.port


def _answers(port: int, query: Path) -> tuple[int, list[str]]:
    result = findscu(port, str(query), aet="OFFIS")
    assert result.returncode == 0, _output(result)
    text = _output(result)
    names = re.findall(r"\(0010,0010\) PN \[([^\]]*)\]", text.split("Find Response", 1)[-1])
    return len(PENDING.findall(text)), sorted(n.strip() for n in names)


@needs_reference
@pytest.mark.parametrize("n", range(13))
def test_dcmtk_example_queries_answer_like_wlmscpfs(
    examples: tuple[Path, list[Path]], reference_port: int, wlmserver_port: int, n: int
) -> None:
    query = examples[1][n]
    expected = _answers(reference_port, query)
    assert _answers(wlmserver_port, query) == expected


# --------------------------------------------------------------------------- findscu -k
@pytest.fixture
def populated(db: Path) -> Path:
    write_wl(
        db / "WLM" / "two.wl",
        PatientName="DOE^JOHN",
        PatientID="P1",
        sps=[
            {
                "Modality": "CT",
                "ScheduledStationAETitle": ["CT01", "CT02"],
                "ScheduledProcedureStepID": "S1",
            },
            {
                "Modality": "MR",
                "ScheduledStationAETitle": "MR01",
                "ScheduledProcedureStepStartDate": "20261123",
                "ScheduledProcedureStepID": "S2",
            },
        ],
    )
    write_wl(
        db / "WLM" / "latin1.wl",
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        PatientID="P2",
        sps=[{"Modality": "US", "ScheduledStationAETitle": "US01"}],
    )
    write_wl(
        db / "WLM" / "utf8.wl",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Δημητρίου^Ελένη",
        PatientID="P3",
        sps=[{"Modality": "DX", "ScheduledStationAETitle": "DX01"}],
    )
    return db


@needs_findscu
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["(0040,0100)[0].Modality=MR"], [("P1", "MR")]),
        (["(0040,0100)[0].ScheduledStationAETitle=CT02"], [("P1", "CT")]),
        (["PatientName=DOE*"], [("P1", "CT"), ("P1", "MR")]),
        (["(0040,0100)[0].ScheduledProcedureStepStartDate=20261123-20261124"], [("P1", "MR")]),
        # same start: by file name (latin1, two, utf8); the MR step is a day later
        ([], [("P2", "US"), ("P1", "CT"), ("P3", "DX"), ("P1", "MR")]),
    ],
)
def test_findscu_override_keys(
    start_server: StartServer,
    populated: Path,
    tmp_path: Path,
    keys: list[str],
    expected: list[tuple[str, str]],
) -> None:
    server = start_server()
    answers = _extract(server.port, tmp_path / "out", "PatientID", "(0040,0100)[0].Modality", *keys)
    assert all(len(a.ScheduledProcedureStepSequence) == 1 for a in answers)
    assert [
        (a.PatientID, a.ScheduledProcedureStepSequence[0].Modality) for a in answers
    ] == expected


@needs_findscu
def test_findscu_gets_correctly_labelled_non_ascii_names(
    start_server: StartServer, populated: Path, tmp_path: Path
) -> None:
    server = start_server()
    answers = _extract(server.port, tmp_path / "all", "PatientName", "PatientID")
    by_id = {a.PatientID: a for a in answers}
    assert str(by_id["P2"].PatientName) == "Müller^Jürgen"
    assert by_id["P2"].SpecificCharacterSet == "ISO_IR 100"
    assert str(by_id["P3"].PatientName) == "Δημητρίου^Ελένη"
    assert by_id["P3"].SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in by_id["P1"]
    # a UTF-8 query (findscu sends -k values as typed) finds the Latin-1 file
    found = _extract(
        server.port,
        tmp_path / "q",
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName=Müller*",
        "PatientID",
    )
    assert [a.PatientID for a in found] == ["P2"]


@needs_findscu
def test_echo_and_unknown_called_ae_title(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    echo = subprocess.run(
        [str(ECHOSCU), "-aec", "WLM", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    rejected = findscu(server.port, "-k", "PatientName", aet="NOSUCHAE")
    assert rejected.returncode != 0
    assert "Called AE Title Not Recognized" in _output(rejected)


@needs_findscu
@pytest.mark.parametrize(
    "key",
    [
        "(0040,0100)[0].ScheduledProcedureStepStartDate=2026-11-22",
        "(0040,0100)[0].ScheduledProcedureStepStartDate=20261123-20261122",
    ],
)
def test_invalid_query_gets_a_failure_status(
    start_server: StartServer, populated: Path, key: str
) -> None:
    server = start_server()
    text = _output(findscu(server.port, "-d", "-k", "PatientName", "-k", key))
    assert re.search(r"Find Response.*\(Failed", text) or "0xa900" in text.lower(), text
    assert "ScheduledProcedureStepStartDate" in text  # the ErrorComment
    after = _output(findscu(server.port, "-k", "PatientName"))
    assert len(PENDING.findall(after)) == 4  # still serving


@needs_findscu
@pytest.mark.parametrize("flag", ["-xb", "-xi"])
def test_big_endian_and_implicit_transfer_syntaxes(
    start_server: StartServer, populated: Path, tmp_path: Path, flag: str
) -> None:
    server = start_server()
    result = findscu(
        server.port,
        flag,
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "PatientName",
        "-k",
        "(0040,0100)[0].Modality=US",
    )
    assert result.returncode == 0, _output(result)
    (answer,) = [dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert str(answer.PatientName) == "Müller^Jürgen"
