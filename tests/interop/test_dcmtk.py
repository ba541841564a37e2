"""Interoperability with DCMTK: its findscu and echoscu against wlmserver, and wlmscpfs itself
as the reference on DCMTK's own example worklists and queries (read from the installed
package at test time and converted into a temporary folder, never copied into the repository).

Every server listens on loopback only (wlmscpfs cannot bind an address, so it listens on all
interfaces, on a free port) and every subprocess has a timeout. Servers are started once per
module; no test changes a database.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_wl
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from wlmserver.config import Config
from wlmserver.service.server import MODALITY_WORKLIST_FIND, WorklistServer

FINDSCU = Path("/usr/bin/findscu")  # not the pynetdicom findscu that may shadow it on PATH
ECHOSCU = Path("/usr/bin/echoscu")
WLMSCPFS = Path("/usr/bin/wlmscpfs")
DUMP2DCM = Path("/usr/bin/dump2dcm")
EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
EXAMPLE_DB = EXAMPLES / "wlistdb" / "OFFIS"
EXAMPLE_QUERIES = EXAMPLES / "wlistqry"
QUERY_COUNT = 13  # wlistqry0.dump ... wlistqry12.dump

needs_findscu = pytest.mark.skipif(not FINDSCU.exists(), reason="DCMTK findscu not installed")
needs_echoscu = pytest.mark.skipif(
    not (FINDSCU.exists() and ECHOSCU.exists()), reason="DCMTK findscu/echoscu not installed"
)
needs_reference = pytest.mark.skipif(
    not (
        FINDSCU.exists()
        and WLMSCPFS.exists()
        and DUMP2DCM.exists()
        and EXAMPLE_DB.is_dir()
        and EXAMPLE_QUERIES.is_dir()
    ),
    reason="DCMTK findscu, wlmscpfs, dump2dcm or the DCMTK examples not installed",
)

TIMEOUT = 30  # seconds, for every subprocess
# a Pending response as logged with -v ("Find Response: 1 (Pending)", or "Received Find
# Response 1 (Pending)" with -X) or with -d (its DIMSE status)
PENDING = re.compile(r"Find Response:? \d+ \(Pending\)|DIMSE Status\s*: 0xff0[01]\b")
FINAL = re.compile(r"Received Final Find Response(?: \(([^)]*)\))?")

# the keys every findscu -k test asks for
SPS = "(0040,0100)[0]"
BASE_KEYS = (
    "PatientName",
    "PatientID",
    f"{SPS}.Modality",
    f"{SPS}.ScheduledStationAETitle",
    f"{SPS}.ScheduledProcedureStepID",
    f"{SPS}.ScheduledProcedureStepStartDate",
)
ALL_STEPS = [("P1", "S1"), ("P1", "S2"), ("P2", "SPS001"), ("P3", "SPS001")]


# --------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str | bytes]) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool; its log (stderr) and output are decoded leniently, as it prints
    values in their own character sets."""
    return subprocess.run(
        args, capture_output=True, encoding="utf-8", errors="replace", timeout=TIMEOUT
    )


def _text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def findscu(
    port: int, *args: str | bytes, aet: str = "WLM", log: str = "-v"
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK's findscu -W against 127.0.0.1 with a log level (-v or -d)."""
    return _run([str(FINDSCU), "-W", log, "-aec", aet, "127.0.0.1", str(port), *args])


def _keys(*keys: str | bytes) -> list[str | bytes]:
    return [a for k in keys for a in ("-k", k)]


def _extract(
    port: int, out: Path, *args: str | bytes, aet: str = "WLM"
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """Query with findscu -X and read its answer files (rsp0001.dcm ...) back with pydicom."""
    out.mkdir(parents=True, exist_ok=True)
    result = findscu(port, "-X", "-od", str(out), *args, aet=aet)
    assert result.returncode == 0, _text(result)
    assert FINAL.search(_text(result)), _text(result)
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert len(answers) == len(PENDING.findall(_text(result))), _text(result)
    return result, answers


def _final_status(result: subprocess.CompletedProcess[str]) -> str:
    match = FINAL.search(_text(result))
    assert match, _text(result)
    return match.group(1) or ""


def _value(value: object) -> str:
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _flatten(ds: Dataset, prefix: str = "") -> tuple[tuple[str, str], ...]:
    """An answer's non-empty values as sorted ``(path, value)`` pairs, sequences included.

    Empty return keys are left out, where wlmscpfs 3.6.7 and wlmserver differ by design: for
    a key the file lacks, wlmscpfs omits a requested sequence (wlmserver returns it empty),
    and it expands an empty SPS item to another key list (with the End Date/Time, without
    the Scheduled Protocol Code Sequence).
    """
    pairs: list[tuple[str, str]] = []
    for elem in ds:
        path = f"{prefix}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                pairs.extend(_flatten(item, f"{path}[{i}]."))
        elif elem.value is not None and _value(elem.value) != "":
            pairs.append((path, _value(elem.value)))
    return tuple(sorted(pairs))


def _steps(answers: list[Dataset]) -> list[tuple[str, str]]:
    return sorted(
        (str(a.PatientID), str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
        for a in answers
    )


def _start(config: Config, transfer_syntaxes: list[str] | None = None) -> WorklistServer:
    server = WorklistServer(config)
    if transfer_syntaxes is not None:  # pynetdicom accepts the first of *its* list proposed
        server.ae.remove_supported_context(MODALITY_WORKLIST_FIND)
        server.ae.add_supported_context(MODALITY_WORKLIST_FIND, transfer_syntaxes)
    server.start()
    return server


def _config(root: Path) -> Config:
    return Config(data_files_path=root, port=0, bind="127.0.0.1", rescan_interval=0)


# --------------------------------------------------------------------------- 1. DCMTK examples
@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """DCMTK's example database (``<root>/OFFIS/*.wl`` plus a lockfile) and its 13 queries,
    converted with dump2dcm."""
    root = tmp_path_factory.mktemp("dcmtk")
    folder = root / "db" / "OFFIS"
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()  # wlmscpfs requires it
    dumps = sorted(EXAMPLE_DB.glob("*.dump"))
    assert dumps, f"no worklist dumps in {EXAMPLE_DB}"
    for dump in dumps:
        result = _run([str(DUMP2DCM), str(dump), str(folder / f"{dump.stem}.wl")])
        assert result.returncode == 0, _text(result)
    queries = []
    for n in range(QUERY_COUNT):
        target = root / "queries" / f"wlistqry{n}.dcm"
        target.parent.mkdir(exist_ok=True)
        result = _run([str(DUMP2DCM), str(EXAMPLE_QUERIES / f"wlistqry{n}.dump"), str(target)])
        assert result.returncode == 0, _text(result)
        queries.append(target)
    return root / "db", queries


@pytest.fixture(scope="module")
def wlmscpfs_port(
    examples: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """DCMTK's wlmscpfs on the example database (single process, so that terminating it
    leaves no forked children)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("wlmscpfs") / "wlmscpfs.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(WLMSCPFS), "-s", "-dhl", "-dfp", str(examples[0]), str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, f"wlmscpfs exited: {log.read_text(errors='replace')}"
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"wlmscpfs not listening on port {port}"
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def example_port(examples: tuple[Path, list[Path]]) -> Iterator[int]:
    """wlmserver on the same example database."""
    server = _start(_config(examples[0]))
    try:
        yield server.port
    finally:
        server.stop()


def _example_answers(
    port: int, query: Path, out: Path
) -> tuple[int, str, list[tuple[tuple[str, str], ...]]]:
    result, answers = _extract(port, out, str(query), aet="OFFIS")
    return len(answers), _final_status(result), sorted(_flatten(a) for a in answers)


@needs_reference
def test_wlmscpfs_reference_is_not_vacuous(
    examples: tuple[Path, list[Path]], wlmscpfs_port: int, tmp_path: Path
) -> None:
    """The harness really reads wlmscpfs's answers: query 0 (all patient names) gets one
    answer per example file (each holds one scheduled procedure step)."""
    files = list((examples[0] / "OFFIS").glob("*.wl"))
    count, status, answers = _example_answers(wlmscpfs_port, examples[1][0], tmp_path)
    assert (count, status) == (len(files), "Success")
    assert all(dict(a).get("PatientName") for a in answers)


@needs_reference
@pytest.mark.parametrize("n", range(QUERY_COUNT))
def test_dcmtk_example_queries_answer_like_wlmscpfs(
    examples: tuple[Path, list[Path]],
    wlmscpfs_port: int,
    example_port: int,
    tmp_path: Path,
    n: int,
) -> None:
    query = examples[1][n]
    count, status, reference = _example_answers(wlmscpfs_port, query, tmp_path / "wlmscpfs")
    got_count, got_status, got = _example_answers(example_port, query, tmp_path / "wlmserver")
    assert (got_count, got_status) == (count, status)
    for keyword in ("PatientID", "PatientName"):  # the patients answered, as a multiset
        assert sorted(dict(a).get(keyword, "") for a in got) == sorted(
            dict(a).get(keyword, "") for a in reference
        ), keyword
    assert got == reference  # every non-empty value of every answer, sequences included


# --------------------------------------------------------------------------- the -k database
@pytest.fixture(scope="module")
def worklists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``WLM/``: one file with a CT step (two station AE titles) and an MR step the day after,
    one in ISO_IR 100 and one in ISO_IR 192."""
    root = tmp_path_factory.mktemp("worklists")
    write_wl(
        root / "WLM" / "two.wl",
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
        root / "WLM" / "latin1.wl",
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        PatientID="P2",
        sps=[{"Modality": "US", "ScheduledStationAETitle": "US01"}],
    )
    write_wl(
        root / "WLM" / "utf8.wl",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Δημητρίου^Ελένη",
        PatientID="P3",
        sps=[{"Modality": "DX", "ScheduledStationAETitle": "DX01"}],
    )
    return root


@pytest.fixture(scope="module")
def wlm_port(worklists: Path) -> Iterator[int]:
    """wlmserver on :func:`worklists`, with its default transfer syntax preferences."""
    server = _start(_config(worklists))
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def big_endian_port(worklists: Path) -> Iterator[int]:
    """wlmserver on :func:`worklists`, preferring explicit VR big endian when proposed."""
    server = _start(
        _config(worklists), [ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    try:
        yield server.port
    finally:
        server.stop()


# --------------------------------------------------------------------------- 2. findscu -k
@needs_findscu
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([], ALL_STEPS),
        ([f"{SPS}.Modality=MR"], [("P1", "S2")]),
        ([f"{SPS}.Modality=XA"], []),
        ([f"{SPS}.ScheduledStationAETitle=CT02"], [("P1", "S1")]),  # the 2nd of 2 values
        ([f"{SPS}.ScheduledStationAETitle=CT01"], [("P1", "S1")]),
        (["PatientName=DOE*"], [("P1", "S1"), ("P1", "S2")]),
        (["PatientName=DOE*", f"{SPS}.Modality=CT"], [("P1", "S1")]),
        ([f"{SPS}.ScheduledProcedureStepStartDate=20261122-20261123"], ALL_STEPS),
        ([f"{SPS}.ScheduledProcedureStepStartDate=20261123-20261124"], [("P1", "S2")]),
        (
            [f"{SPS}.ScheduledProcedureStepStartDate=-20261122"],
            [("P1", "S1"), ("P2", "SPS001"), ("P3", "SPS001")],
        ),
    ],
    ids=lambda v: None if v and not isinstance(v[0], str) else " ".join(v) or "no-keys",
)
def test_findscu_override_keys(
    wlm_port: int, tmp_path: Path, keys: list[str], expected: list[tuple[str, str]]
) -> None:
    _, answers = _extract(wlm_port, tmp_path, *_keys(*BASE_KEYS, *keys))
    assert _steps(answers) == sorted(expected)
    for answer in answers:
        # exactly the requested keys, and one SPS item: the matching step
        assert {e.keyword for e in answer} - {"SpecificCharacterSet"} == {
            "PatientName",
            "PatientID",
            "ScheduledProcedureStepSequence",
        }
        (step,) = answer.ScheduledProcedureStepSequence
        assert {e.keyword for e in step} == {
            "Modality",
            "ScheduledStationAETitle",
            "ScheduledProcedureStepID",
            "ScheduledProcedureStepStartDate",
        }
        expected_step = {
            "S1": ("CT", ["CT01", "CT02"], "20261122"),
            "S2": ("MR", ["MR01"], "20261123"),
        }.get(str(step.ScheduledProcedureStepID))
        if expected_step:
            station = step.ScheduledStationAETitle
            stations = list(station) if isinstance(station, MultiValue) else [station]
            assert (step.Modality, stations, step.ScheduledProcedureStepStartDate) == expected_step


@needs_findscu
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # what dcmjs-dimse sends: an optional key wlmserver does not match by default is a
        # return key only (PS3.4 K.2.2.1.1.2), as for wlmscpfs; it got no answer at all
        (["PregnancyStatus=0"], ALL_STEPS),
        (["PregnancyStatus=0", "PatientWeight=70", f"{SPS}.ScheduledStationName=X"], ALL_STEPS),
        (["PregnancyStatus=0", f"{SPS}.Modality=MR"], [("P1", "S2")]),
    ],
    ids=lambda v: None if v and not isinstance(v[0], str) else " ".join(v),
)
def test_findscu_return_keys_only_narrow_nothing(
    wlm_port: int, tmp_path: Path, keys: list[str], expected: list[tuple[str, str]]
) -> None:
    _, answers = _extract(wlm_port, tmp_path, *_keys(*BASE_KEYS, *keys))
    assert _steps(answers) == sorted(expected)
    for answer in answers:  # returned, filled from the entry (which has none): zero-length
        assert "PregnancyStatus" in answer and answer.PregnancyStatus in (None, "", b"")


# --------------------------------------------------------------------------- 3. character sets
NAMES = {
    "P1": ("DOE^JOHN", None),
    "P2": ("Müller^Jürgen", "ISO_IR 100"),
    "P3": ("Δημητρίου^Ελένη", "ISO_IR 192"),
}


@needs_findscu
def test_findscu_gets_correctly_labelled_non_ascii_names(wlm_port: int, tmp_path: Path) -> None:
    _, answers = _extract(wlm_port, tmp_path, *_keys("PatientName", "PatientID"))
    assert sorted(str(a.PatientID) for a in answers) == ["P1", "P1", "P2", "P3"]
    for answer in answers:
        name, charset = NAMES[str(answer.PatientID)]
        assert str(answer.PatientName) == name
        assert answer.get("SpecificCharacterSet") == charset  # ASCII answers carry none


@needs_findscu
@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        # findscu sends -k values as given: here UTF-8 ...
        ("ISO_IR 192", "PatientName=Müller*".encode(), "P2"),
        ("ISO_IR 192", "PatientName=Δημητρίου*".encode(), "P3"),
        # ... and here Latin-1 bytes
        ("ISO_IR 100", "PatientName=Müller*".encode("latin-1"), "P2"),
        ("ISO_IR 100", "PatientName=*ller^J?rgen".encode("latin-1"), "P2"),
    ],
    ids=["utf8-latin1-file", "utf8-utf8-file", "latin1-latin1-file", "latin1-wildcards"],
)
def test_non_ascii_query_finds_file_in_another_character_set(
    wlm_port: int, tmp_path: Path, charset: str, name: bytes, expected: str
) -> None:
    _, answers = _extract(
        wlm_port, tmp_path, *_keys(f"SpecificCharacterSet={charset}", name, "PatientID")
    )
    assert [str(a.PatientID) for a in answers] == [expected]
    (answer,) = answers
    assert (str(answer.PatientName), answer.get("SpecificCharacterSet")) == NAMES[expected]


# --------------------------------------------------------------------------- 4. echo, rejection
@needs_echoscu
def test_echo_and_unknown_called_ae_title(wlm_port: int) -> None:
    echo = _run([str(ECHOSCU), "-v", "-aec", "WLM", "127.0.0.1", str(wlm_port)])
    assert echo.returncode == 0, _text(echo)
    assert "Received Echo Response (Success)" in _text(echo)
    rejected = findscu(wlm_port, *_keys("PatientName"), aet="NOSUCHAE")
    assert rejected.returncode != 0
    text = _text(rejected)
    assert "Association Rejected" in text, text
    assert "Rejected Permanent, Source: Service User" in text, text
    assert "Reason: Called AE Title Not Recognized" in text, text
    after = _run([str(ECHOSCU), "-aec", "WLM", "127.0.0.1", str(wlm_port)])
    assert after.returncode == 0, _text(after)


# --------------------------------------------------------------------------- 5. invalid queries
@needs_findscu
@pytest.mark.parametrize(
    ("path", "value", "tag"),
    [
        (f"{SPS}.ScheduledProcedureStepStartDate", "2026-11-22", "(0040,0002)"),
        (f"{SPS}.ScheduledProcedureStepStartDate", "20261123-20261122", "(0040,0002)"),
        ("PatientBirthDate", "19801301", "(0010,0030)"),
    ],
    ids=["dashed-date", "reversed-range", "no-13th-month"],
)
def test_invalid_query_gets_a_failure_status(
    wlm_port: int, path: str, value: str, tag: str
) -> None:
    key, keyword = f"{path}={value}", path.rsplit(".", 1)[-1]
    result = findscu(wlm_port, *_keys("PatientName", key))
    assert not PENDING.search(_text(result)), _text(result)
    assert _final_status(result) == "Error: DataSetDoesNotMatchSOPClass", _text(result)
    # the status detail (OffendingElement, ErrorComment) is logged with -d
    result = findscu(wlm_port, *_keys("PatientName", key), log="-d")
    text = _text(result)
    assert not PENDING.search(text), text
    assert re.search(r"DIMSE Status\s*: 0xa900: Error: Data Set does not match SOP Class", text)
    offending = re.search(r"\(0000,0901\) AT (\S+)", text)
    assert offending and offending.group(1) == tag, text
    comment = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", text)
    # the attribute (SPS keywords shortened to fit 64 characters), then the rule, whole
    short = keyword.replace("ScheduledProcedureStep", "SPS")
    assert comment and comment.group(1).startswith((keyword, short)), text
    assert "YYYYMMDD" in comment.group(1) or "after it ends" in comment.group(1), text
    # the server keeps serving
    after = findscu(wlm_port, *_keys("PatientName"))
    assert len(PENDING.findall(_text(after))) == len(ALL_STEPS), _text(after)
    assert _final_status(after) == "Success"


# --------------------------------------------------------------------------- 6. transfer syntaxes
@needs_findscu
@pytest.mark.parametrize(
    ("server", "flag", "accepted"),
    [
        ("default", "-xe", "LittleEndianExplicit"),
        ("default", "-xi", "LittleEndianImplicit"),
        # findscu -xb only puts big endian first; pynetdicom accepts by its own preference
        ("default", "-xb", "LittleEndianExplicit"),
        ("big-endian", "-xb", "BigEndianExplicit"),
        ("big-endian", "-xi", "LittleEndianImplicit"),
    ],
)
def test_transfer_syntaxes(
    wlm_port: int,
    big_endian_port: int,
    tmp_path: Path,
    server: str,
    flag: str,
    accepted: str,
) -> None:
    port = wlm_port if server == "default" else big_endian_port
    keys = _keys(*BASE_KEYS)
    _, expected = _extract(wlm_port, tmp_path / "baseline", "-xe", *keys)
    result, answers = _extract(port, tmp_path / flag, "-d", flag, *keys)
    text = _text(result)
    assert re.search(rf"Accepted Transfer Syntax: ={accepted}\b", text), text
    assert sorted(_flatten(a) for a in answers) == sorted(_flatten(a) for a in expected)
    assert {str(a.PatientName) for a in answers} == {n for n, _ in NAMES.values()}
