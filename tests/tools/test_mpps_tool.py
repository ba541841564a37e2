"""``wlmserver mpps``: start and complete a worklist entry against a running server, as a
modality would; ``wlmserver check`` on the forwarding queue; ``--mpps-forward`` parsing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import StartServer, make_mpps, write_wl

from wlmserver.cli import main
from wlmserver.config.file import load as load_config_file
from wlmserver.config.forward import DEFAULT_TIMEOUT, ForwardTarget
from wlmserver.config.loader import config_from_args
from wlmserver.config.options import UsageError, build_parser
from wlmserver.matching.mpps import PpsStatus, StepKey
from wlmserver.store.forward import ForwardQueue, Kind, forward_folder

STEP = StepKey("1.2.826.0.1.3680043.10.9999.1", "RP001", "SPS001", "ACC001")


def test_start_then_complete_an_entry(
    start_server: StartServer, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wl(db / "WLM" / "one.wl")
    server = start_server()
    port = str(server.port)
    assert main(["mpps", "start", "127.0.0.1", port, "-aec", "WLM", "--accession", "ACC001"]) == 0
    out, err = capsys.readouterr()
    uid = out.strip()
    assert server.mpps.uids() == [uid]
    assert server.mpps.steps.status(STEP) is PpsStatus.IN_PROGRESS
    assert "IN PROGRESS for accession ACC001, RP RP001, SPS SPS001" in err
    stored = server.mpps.get(uid)
    assert stored is not None and stored.PerformedStationAETitle == "WLMMPPS"
    assert stored.Modality == "CT" and stored.PatientID == "PID001"
    assert main(["mpps", "complete", "127.0.0.1", port, "-aec", "WLM", uid]) == 0
    assert server.mpps.steps.status(STEP) is PpsStatus.COMPLETED
    assert f"N-SET {uid} COMPLETED: Success" in capsys.readouterr().err
    # a second final N-SET: refused, status and comment shown (PS3.4 Table F.7.2-2)
    assert main(["mpps", "discontinue", port, "-aec", "WLM", uid]) == 1
    err = capsys.readouterr().err
    assert "status 0x0110, Error ID A710H: Performed Procedure Step Object may no" in err


def test_start_from_a_file_with_several_steps(
    start_server: StartServer, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_wl(tmp_path / "two.wl", sps=[{}, {"ScheduledProcedureStepID": "SPS002"}])
    server = start_server()
    port = str(server.port)
    with pytest.raises(SystemExit):  # which one? the error lists them
        main(["mpps", "start", port, "-aec", "WLM", "--file", str(path)])
    assert "2 worklist entries match" in capsys.readouterr().err
    assert main(["mpps", "start", port, "-aec", "WLM", "--file", str(path), "--item", "2"]) == 0
    uid = capsys.readouterr().out.strip()
    assert server.mpps.steps.status(STEP._replace(scheduled_procedure_step_id="SPS002")) is (
        PpsStatus.IN_PROGRESS
    )
    assert server.mpps.steps.status(STEP) is None
    assert server.mpps.uids() == [uid]


def test_failures_say_what_happened(
    start_server: StartServer, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    port = str(server.port)
    assert main(["mpps", "complete", port, "-aec", "WLM", "1.2.3.4"]) == 1
    assert "N-SET refused, status 0x0112: SOP Instance UID: no such MPPS instance" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["mpps", "start", port, "-aec", "WLM", "--accession", "NOPE"])
    assert "no worklist entry matches" in capsys.readouterr().err
    assert main(["mpps", "complete", port, "-aec", "NOSUCH", "1.2.3.4"]) == 3
    assert "Called AE Title Not Recognized" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mpps", "complete", port, "-aec", "WLM"])  # no UID
    assert "not a valid SOP Instance UID" in capsys.readouterr().err


def test_check_shows_the_forwarding_queue(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wl(db / "WLM" / "one.wl")
    assert main(["check", str(db)]) == 0
    assert "MPPS forwarding" not in capsys.readouterr().out  # never forwarded
    queue = ForwardQueue(forward_folder(db / ".mpps"))
    queue.open()
    queue.append(Kind.N_CREATE, "1.2.3", make_mpps())
    queue.fail(queue.append(Kind.N_CREATE, "1.2.4", make_mpps()))
    assert main(["check", str(db)]) == 0
    out = capsys.readouterr().out
    assert "MPPS forwarding queue" in out and "1 queued (oldest 0 s ago), 1 failed" in out
    other = tmp_path / "elsewhere"
    ForwardQueue(forward_folder(other)).open()
    assert main(["check", str(db), "--mpps-folder", str(other), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["mpps_forward"]
    assert (report["pending"], report["failed"], report["oldest_age_seconds"]) == (0, 0, None)
    assert report["retrying"] == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ris:104", "no AE title before @"),
        ("RIS@ris", "no host or no port"),
        ("RIS@ris:0", "not a number from 1 to 65535"),
        ("RIS@ris:65536", "not a number from 1 to 65535"),
        ("AAAAAAAAAAAAAAAAA@ris:104", "is not 1 to 16 characters"),
        ("RIS@:104", "no host or no port"),
    ],
)
def test_a_forward_target_that_cannot_be_used_is_named(
    value: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError) as raised:
        build_parser().parse_args(["--mpps-forward", value])
    assert problem in str(raised.value)


def test_forwarding_options_reach_the_config_from_the_command_line_and_the_file(
    tmp_path: Path, db: Path
) -> None:
    args = build_parser().parse_args(["--mpps-forward", "RIS@[::1]:104", "-dfp", str(db)])
    config = config_from_args(args)
    assert config.mpps_forward == ForwardTarget("RIS", "::1", 104)
    assert config.mpps_forward_aet is None
    assert config.mpps_forward_timeout == DEFAULT_TIMEOUT == 60.0
    path = tmp_path / "wlmserver.toml"
    path.write_text(
        '[server]\nmpps-forward = "RIS@ris.example:11112"\nmpps-forward-aet = "WLM1"\n'
        "mpps-forward-timeout = 90\n"
    )
    from wlmserver.config.loader import apply_config_file

    parser = build_parser()
    apply_config_file(parser, load_config_file(path))
    config = config_from_args(parser.parse_args(["-dfp", str(db)]))
    assert (config.mpps_forward, config.mpps_forward_aet, config.mpps_forward_timeout) == (
        ForwardTarget("RIS", "ris.example", 11112),
        "WLM1",
        90.0,
    )


@pytest.mark.parametrize(("option", "value"), [("aet", "WLM1"), ("timeout", "90")])
def test_forward_options_alone_are_refused(
    db: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["-dfp", str(db), f"--mpps-forward-{option}", value])
    assert f"--mpps-forward-{option} needs --mpps-forward" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_forward_timeout_is_a_positive_number_of_seconds(value: str) -> None:
    with pytest.raises(UsageError):
        build_parser().parse_args(
            ["--mpps-forward", "RIS@ris:104", "--mpps-forward-timeout", value]
        )


def test_the_age_of_the_oldest_message(tmp_path: Path) -> None:
    queue = ForwardQueue(tmp_path / "forward")
    queue.open()
    message = queue.append(Kind.N_CREATE, "1.2.3", make_mpps())
    import os

    hour_ago = time.time() - 3600
    os.utime(message.path, (hour_ago, hour_ago))
    assert queue.state().describe().startswith("1 queued (oldest 1 h 0 min ago)")
