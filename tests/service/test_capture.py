"""Request capture (``--request-file-path``): every C-FIND identifier written, safely named,
in a form ``wlmserver query --request`` and ``dump2dcm`` read back."""

from __future__ import annotations

import stat
import subprocess
import threading
from datetime import datetime
from pathlib import Path

import pytest
from conftest import StartServer, find, write_wl
from pydicom import dcmread
from pydicom.dataset import Dataset

from wlmserver.cli import main
from wlmserver.service import capture
from wlmserver.tools.client import load_request

DUMP2DCM = Path("/usr/bin/dump2dcm")


def _query(patient_id: str) -> Dataset:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.PatientName = "Müller*"
    query.PatientID = patient_id
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [item]
    return query


@pytest.mark.parametrize(
    "patient_id", ["../../etc/passwd", "/abs/path", "..", "a\\b", "\x00x", ".hidden"]
)
def test_names_from_request_data_stay_in_the_folder(tmp_path: Path, patient_id: str) -> None:
    name = capture.request_name(
        "#p_#c_#a.dump", calling="../X", called="WLM", patient_id=patient_id, when=datetime.now()
    )
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    path = capture.write_request(tmp_path, "#p.dump", _query(patient_id), calling="A", called="B")
    assert path.parent == tmp_path and path.exists()


def test_the_server_writes_each_request(start_server: StartServer, db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", PatientName="Müller^Hans", PatientID="P1")
    out = db.parent / "requests"
    server = start_server(request_file_path=out, request_file_format="#c_#p.dump")
    assert find(server.port, _query("P1"))[-1][0] == 0
    assert find(server.port, _query("P1"))[-1][0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["WLM_P1.dump", "WLM_P1_2.dump"]
    replay = load_request(out / "WLM_P1.dump")
    assert (
        replay.PatientName == "Müller*"
        and replay.ScheduledProcedureStepSequence[0].Modality == "CT"
    )
    dicom = start_server(request_file_path=out / "dcm", request_file_format="#t.dcm")
    find(dicom.port, _query("P1"))
    (path,) = (out / "dcm").iterdir()
    assert dcmread(path).PatientID == "P1" and load_request(path).PatientName == "Müller*"


def test_query_replays_a_captured_request(
    start_server: StartServer, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wl(db / "WLM" / "a.wl", PatientName="Müller^Hans", PatientID="P1")
    request = capture.write_request(tmp_path, "r.dump", _query("P1"), calling="A", called="WLM")
    server = start_server()
    assert (
        main(["query", "127.0.0.1", str(server.port), "-aec", "WLM", "--request", str(request)])
        == 0
    )
    assert "1 answers; final status 0x0000" in capsys.readouterr().err


@pytest.mark.skipif(not DUMP2DCM.exists(), reason="DCMTK not installed")
def test_dump2dcm_reads_the_dump(tmp_path: Path) -> None:
    request = capture.write_request(tmp_path, "r.dump", _query("P1"), calling="A", called="WLM")
    subprocess.run([str(DUMP2DCM), str(request), str(tmp_path / "r.dcm")], check=True)
    ds = dcmread(tmp_path / "r.dcm", force=True)
    assert ds.PatientName == "Müller*" and ds.ScheduledProcedureStepSequence[0].Modality == "CT"


def test_an_unwritable_folder_does_not_break_the_query(
    start_server: StartServer, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    blocker = db.parent / "file"
    blocker.write_text("not a folder")
    server = start_server(request_file_path=blocker / "sub")
    assert find(server.port, _query("P1"))[-1][0] == 0
    assert "cannot write a request file" in caplog.text


def test_simultaneous_captures_of_one_name_are_all_kept_and_private(tmp_path: Path) -> None:
    """30 captures with the same name left 17-19 files (check, then write); and files holding
    patient data were created 0644 in a 0755 folder."""
    folder = tmp_path / "requests"
    barrier = threading.Barrier(30)
    paths: list[Path] = []

    def capture_one() -> None:
        barrier.wait()
        paths.append(
            capture.write_request(folder, "same.dump", _query("P1"), calling="A", called="B")
        )

    threads = [threading.Thread(target=capture_one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(paths)) == 30
    assert len(list(folder.iterdir())) == 30
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o600}
