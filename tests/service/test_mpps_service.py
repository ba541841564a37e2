"""MPPS over the network: pynetdicom as the modality, an in-process server on a free loopback
port; N-CREATE and N-SET on the worklist's port, AE titles and allow-lists."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, echo, make_final, make_mpps
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from wlmserver.cli import main
from wlmserver.config.access import Access, AllowList
from wlmserver.matching.mpps import PpsStatus, StepKey
from wlmserver.service.server import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MODALITY_WORKLIST_FIND,
    MppsFolderError,
)

UID = "1.2.826.0.1.3680043.10.9999.60"
STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")


@contextmanager
def modality(port: int, calling: str = "CT01", called: str = "WLM") -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def create(assoc: Association, ds: Dataset, uid: str | None = UID) -> tuple[int, Any, Any]:
    status, answer = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
    assert status is not None, "no response"
    return int(status.Status), status, answer


def n_set(assoc: Association, ds: Dataset, uid: str = UID) -> tuple[int, Any]:
    status, _ = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
    assert status is not None, "no response"
    return int(status.Status), status


def test_the_life_of_a_step(start_server: StartServer, db: Path) -> None:
    server = start_server()
    assert not (db / ".mpps").exists()  # made at the first N-CREATE, not before
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
        assert server.mpps.steps.status(STEP) == PpsStatus.IN_PROGRESS
        progress = Dataset()
        progress.PerformedSeriesSequence = make_final(series=2).PerformedSeriesSequence
        assert n_set(assoc, progress)[0] == 0x0000
        assert n_set(assoc, make_final())[0] == 0x0000
    assert server.mpps.steps.status(STEP) == PpsStatus.COMPLETED
    assert os.listdir(db / ".mpps") == [f"{UID}.dcm"]
    assert echo(server.port) == 0  # the worklist side is untouched


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_refused_requests_carry_the_standard_status_and_a_comment(
    start_server: StartServer, final: str
) -> None:
    server = start_server()
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
        status, response, _ = create(assoc, make_mpps())
        assert (status, response.ErrorComment) == (0x0111, "SOP Instance UID: the instance exists")
        status, response = n_set(assoc, make_final(), uid="1.2.3.4")
        assert status == 0x0112 and "no such MPPS instance" in response.ErrorComment
        status, response, _ = create(assoc, make_mpps(Modality=None), uid="1.2.3.5")
        assert status == 0x0120 and "Modality" in response.ErrorComment
        status, response, _ = create(
            assoc, make_mpps(PerformedProcedureStepStatus=final), uid="1.2.3.6"
        )
        assert status == 0x0106 and "IN PROGRESS" in response.ErrorComment
        status, response = n_set(assoc, make_final(PatientID="OTHER"))
        assert status == 0x0105 and "PatientID" in response.ErrorComment
        assert [int(t) for t in _tags(response.AttributeIdentifierList)] == [0x00100020]
        status, response = n_set(assoc, make_final(PerformedProcedureStepStatus="DONE"))
        assert status == 0x0106
        assert n_set(assoc, make_final(final))[0] == 0x0000
        status, response = n_set(assoc, make_final())
        assert status == 0x0110  # PS3.4 Table F.7.2-2
        assert response.ErrorComment == "Performed Procedure Step Object may no longer be updated"
        assert response.ErrorID == 0xA710
    assert server.mpps.uids() == [UID]  # nothing half-stored


def _tags(value: Any) -> list[Any]:
    return (
        list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
    )


def test_the_scp_assigns_a_uid_when_the_modality_gives_none(start_server: StartServer) -> None:
    server = start_server()
    commands: list[Dataset] = []  # pynetdicom returns the status only: read the response
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="WLM",
        evt_handlers=[
            (evt.EVT_DIMSE_RECV, lambda event: commands.append(event.message.command_set))
        ],
    )
    assert assoc.is_established
    try:
        assert create(assoc, make_mpps(), uid=None)[0] == 0x0000
        uid = str(commands[-1].AffectedSOPInstanceUID)
        assert server.mpps.uids() == [uid]  # PS3.7 10.1.5.1.4: returned in the response
        assert n_set(assoc, make_final(), uid=uid)[0] == 0x0000
    finally:
        assoc.release()
    assert server.mpps.steps.status(STEP) == PpsStatus.COMPLETED


def test_group_and_unscheduled_cases_are_logged_without_patient_data(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    group = make_mpps(
        steps=[{}, {"RequestedProcedureID": "RP002", "ScheduledProcedureStepID": "SPS002"}],
        PatientName="ZQXSECRET^ALICE",
        PatientID="PIDZQX4711",
    )
    unscheduled = make_mpps(
        steps=[{"RequestedProcedureID": "", "ScheduledProcedureStepID": "", "AccessionNumber": ""}],
        PatientName="ZQXSECRET^ALICE",
        PatientID="PIDZQX4711",
    )
    with caplog.at_level(logging.DEBUG, "wlmserver"), modality(server.port) as assoc:
        assert create(assoc, group)[0] == 0x0000
        assert create(assoc, unscheduled, uid="1.2.3.7")[0] == 0x0000
        assert n_set(assoc, make_final(PatientID="OTHERZQX"), uid="1.2.3.7")[0] == 0x0105
    second = STEP._replace(requested_procedure_id="RP002", scheduled_procedure_step_id="SPS002")
    assert server.mpps.steps.status(STEP) == server.mpps.steps.status(second)
    assert [p.sop_instance_uid for p in server.mpps.steps.unscheduled()] == ["1.2.3.7"]
    ours = [r for r in caplog.records if r.name.startswith("wlmserver")]
    lines = [r.getMessage() for r in ours if r.levelno >= logging.INFO]
    assert any(f"{UID} IN PROGRESS, 2 steps" in m for m in lines)
    assert any("1.2.3.7 IN PROGRESS, unscheduled" in m for m in lines)
    # the steps' identifiers (the accession number among them) at DEBUG only (issue 20)
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    assert any("RP001/SPS001" in m and "RP002/SPS002" in m for m in debug)
    assert not any("RP001" in m or "ACC001" in m for m in lines)
    text = "\n".join(lines)
    assert "ZQX" not in text and "PIDZQX" not in text


def test_mpps_survives_a_restart_of_the_server(start_server: StartServer, db: Path) -> None:
    server = start_server()
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
    server.stop()
    again = start_server()
    assert again.mpps.steps.status(STEP) == PpsStatus.IN_PROGRESS
    with modality(again.port) as assoc:
        assert n_set(assoc, make_final("DISCONTINUED"))[0] == 0x0000
        assert n_set(assoc, make_final())[0] == 0x0110


def test_the_association_policy_applies_to_mpps(start_server: StartServer) -> None:
    server = start_server(access=Access(AllowList(("CT01",))))
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
    assert assoc.is_rejected
    for called in ("NOSUCHAE", ".mpps"):  # the MPPS folder is never an AE folder
        ae = AE(ae_title="CT01")
        ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
        ae.add_requested_context(MODALITY_WORKLIST_FIND)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=called)
        assert assoc.is_rejected, called
    with modality(server.port, calling="CT01") as allowed:
        assert create(allowed, make_mpps())[0] == 0x0000
    assert server.mpps.uids() == [UID]


def test_a_folder_of_its_own_is_configurable(
    start_server: StartServer, db: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "state" / "mpps"
    server = start_server(mpps_folder=folder)
    assert folder.is_dir()  # an explicit folder is made at start
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
    assert os.listdir(folder) == [f"{UID}.dcm"] and not (db / ".mpps").exists()
    with pytest.raises(MppsFolderError, match="AE folder WLM"):
        start_server(mpps_folder=db / "WLM" / "mpps")


def test_the_command_line_refuses_an_mpps_folder_inside_an_ae_folder(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-dfp", str(db), "--mpps-folder", str(db / "WLM"), "0"])
    assert exited.value.code == 2
    assert "AE folder WLM" in capsys.readouterr().err
