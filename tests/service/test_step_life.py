"""The life of a step over the network: scheduled, started (N-CREATE), completed (N-SET),
hidden; answered with its status, live and across a restart; DCMTK's findscu sees the same."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import StartServer, find, make_dataset, make_final, make_mpps, write_wl
from pydicom.dataset import Dataset
from service.test_mpps_service import create, modality, n_set

from wlmserver.config.profiles import Profile, Profiles

FINDSCU = "/usr/bin/findscu"


def _query(status: str = "") -> Dataset:
    query = Dataset()
    query.PatientID = ""
    query.AccessionNumber = ""
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepStatus = status
    query.ScheduledProcedureStepSequence = [item]
    return query


def _steps(port: int, status: str = "") -> list[tuple[str, str]]:
    """(SPS ID, status) of each answer."""
    answers = [a for s, a in find(port, _query(status)) if s == 0xFF00 and a is not None]
    return sorted(
        (
            str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID),
            str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus or ""),
        )
        for a in answers
    )


@pytest.fixture
def two_steps(db: Path) -> Path:
    """One file with two steps of one requested procedure: SPS001 and SPS002."""
    ds = make_dataset(
        sps=[{"ScheduledProcedureStepStatus": "SCHEDULED"}, {"ScheduledProcedureStepID": "SPS002"}]
    )
    write_wl(db / "WLM" / "a.wl", ds)
    return db


def test_scheduled_started_completed_hidden(start_server: StartServer, two_steps: Path) -> None:
    server = start_server()
    assert _steps(server.port) == [("SPS001", "SCHEDULED"), ("SPS002", "")]
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000  # performs SPS001
        assert _steps(server.port) == [("SPS001", "STARTED"), ("SPS002", "")]  # live
        assert n_set(assoc, make_final())[0] == 0x0000
    assert _steps(server.port) == [("SPS002", "")]  # COMPLETED: hidden by default
    # a query asking for a status gets it, hidden or not
    assert _steps(server.port, "COMPLETED") == [("SPS001", "COMPLETED")]
    assert _steps(server.port, "SCHEDULED") == []


def test_the_status_survives_a_restart(start_server: StartServer, two_steps: Path) -> None:
    before = (two_steps / "WLM" / "a.wl").read_bytes()
    server = start_server()
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
        assert n_set(assoc, make_final("DISCONTINUED"))[0] == 0x0000
    server.stop()
    again = start_server()
    assert _steps(again.port) == [("SPS002", "")]
    assert _steps(again.port, "DISCONTINUED") == [("SPS001", "DISCONTINUED")]
    assert (two_steps / "WLM" / "a.wl").read_bytes() == before  # the RIS's file: untouched


def test_hide_nothing_or_per_profile(start_server: StartServer, two_steps: Path) -> None:
    server = start_server(hide_statuses=frozenset())
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
        assert n_set(assoc, make_final("DISCONTINUED"))[0] == 0x0000
    assert _steps(server.port) == [("SPS001", "DISCONTINUED"), ("SPS002", "")]
    server.stop()
    # the server hides both; the modality's profile hides only COMPLETED (it may resume)
    profiles = Profiles(
        (Profile("ct", calling_ae_titles=("TESTSCU",), hide_statuses=frozenset({"COMPLETED"})),)
    )
    profiled = start_server(profiles=profiles)
    assert _steps(profiled.port) == [("SPS001", "DISCONTINUED"), ("SPS002", "")]


def test_the_group_case_hides_every_step_performed(
    start_server: StartServer, two_steps: Path
) -> None:
    server = start_server()
    both = make_mpps(steps=[{}, {"ScheduledProcedureStepID": "SPS002"}])
    with modality(server.port) as assoc:
        assert create(assoc, both)[0] == 0x0000
        assert _steps(server.port) == [("SPS001", "STARTED"), ("SPS002", "STARTED")]
        assert n_set(assoc, make_final())[0] == 0x0000
    assert _steps(server.port) == []


@pytest.mark.skipif(shutil.which(FINDSCU) is None, reason="DCMTK's findscu is not installed")
def test_findscu_sees_the_started_status(start_server: StartServer, two_steps: Path) -> None:
    server = start_server()
    with modality(server.port) as assoc:
        assert create(assoc, make_mpps())[0] == 0x0000
    done = subprocess.run(
        [
            FINDSCU,
            "-W",
            "-aec",
            "WLM",
            "-k",
            "(0040,0100)[0].ScheduledProcedureStepID",
            "-k",
            "(0040,0100)[0].ScheduledProcedureStepStatus",
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "CS [STARTED ]" in out and "[SPS001]" in out and "[SPS002]" in out


def test_an_unscheduled_mpps_is_kept_and_changes_no_step(
    start_server: StartServer, two_steps: Path
) -> None:
    server = start_server()
    unscheduled = make_mpps(
        steps=[{"ScheduledProcedureStepID": "", "RequestedProcedureID": "", "AccessionNumber": ""}]
    )
    with modality(server.port) as assoc:
        assert create(assoc, unscheduled)[0] == 0x0000
        assert n_set(assoc, make_final())[0] == 0x0000
    assert _steps(server.port) == [("SPS001", "SCHEDULED"), ("SPS002", "")]
    assert [p.unscheduled for p in server.mpps.steps] == [True]
    assert len(list((two_steps / ".mpps").glob("*.dcm"))) == 1
