"""The command line: wlmscpfs option names, errors, and the real process as a user starts it."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import echo, find, start_command, write_wl
from pydicom.dataset import Dataset

from wlmserver.cli import main
from wlmserver.config import DEFAULT_PORT, Config, bundled_database
from wlmserver.config.loader import config_from_args
from wlmserver.config.options import build_parser
from wlmserver.matching.answers import CharsetPolicy


def test_defaults(db: Path) -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert config.port == DEFAULT_PORT
    assert config.data_files_path == bundled_database().resolve()
    assert config.reject_incomplete and config.expand_empty_sps and config.fail_invalid_query


def test_wlmscpfs_option_names(db: Path) -> None:
    args = build_parser().parse_args(
        [
            "-dfp",
            str(db),
            "-dfr",
            "-nse",
            "-ta",
            "5",
            "-td",
            "7",
            "--max-associations",
            "3",
            "-pdu",
            "32768",
            "-cs1",
            "--no-fail",
            "--bind",
            "127.0.0.1",
            "-s",
            "104",
        ]
    )
    config = config_from_args(args)
    assert config.data_files_path == db.resolve()
    assert config.port == 104
    assert not config.reject_incomplete and not config.expand_empty_sps
    assert (config.acse_timeout, config.dimse_timeout) == (5, 7)
    assert (config.max_associations, config.max_pdu) == (3, 32768)
    assert config.charset_policy is CharsetPolicy.LATIN1 and not config.fail_invalid_query
    assert config.bind == "127.0.0.1"
    long_names = build_parser().parse_args(
        [
            "--data-files-path",
            str(db),
            "--disable-file-reject",
            "--enable-file-reject",
            "--no-sq-expansion",
            "--acse-timeout",
            "5",
            "--keep-char-set",
            "--log-level",
            "warn",
        ]
    )
    assert config_from_args(long_names).reject_incomplete  # the last of -dfr/-efr wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-dfp", "/nonexistent/db"], "not a folder"),
        (["-pdu", "100"], "-pdu"),
        (["--any-aet", "../x"], "--any-aet"),
        (["--poll", "0"], "positive"),
        (["not-a-port"], "'not-a-port' is not a port number: 'wlmserver [options] [port]' serves"),
        (["70000"], "port 70000: a port is 0 to 65535"),
        (["qurey"], "'qurey' is not a port: did you mean 'wlmserver query'?"),
        (["11112", "11113"], "only one port can be given; '11113' is a second port"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_or_file_given_as_the_port_says_what_to_type(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = write_wl(db / "WLM" / "a.wl")
    cases = [
        ([str(db)], f"wlmserver: error: '{db}' is a folder: to serve it, use -dfp {db} [port]"),
        ([str(db), "104"], f"'{db}' is a folder: to serve it, use -dfp {db} [port]"),
        (["104", str(db)], f"only one port can be given; '{db}' is a folder: to serve it, use"),
        (
            [str(db / "WLM")],
            f"'{db / 'WLM'}' is an AE folder (it holds .wl files): to serve it, give its "
            f"database root: -dfp {db} [port] (it is then served as AE title 'WLM')",
        ),
        ([str(wl)], f"'{wl}' is a file, not a port: 'wlmserver check {wl}' says whether"),
        ([str(db / "nothing")], "is not a port, and there is no such folder"),
        (
            ["-dfp", str(db / "WLM")],
            f"-dfp {db / 'WLM'} holds .wl files itself: it is an AE folder, not a database "
            f"root; use -dfp {db} (it is then served as AE title 'WLM')",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2, argv
        assert message in err, (argv, err)
        assert "invalid int" not in err and "argument port" not in err


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    return err


def test_python_m_serves_a_wlmscpfs_database(db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", PatientID="PIDCLI7")
    (db / "WLM" / "lockfile").touch()
    process, port, line = start_command(
        [sys.executable, "-m", "wlmserver", "-dfp", str(db), "--bind", "127.0.0.1", "0"]
    )
    try:
        assert str(db) in line and "WLM" in line and "findscu -W -aec WLM" in line
        assert echo(port) == 0
        query = Dataset()
        query.PatientID = ""
        answers = [a for s, a in find(port, query) if s == 0xFF00]
        assert [a.PatientID for a in answers] == ["PIDCLI7"]
    finally:
        err = _stop(process)
    assert "AE folder WLM: 1 entries" in err
    assert "C-FIND from TESTSCU" in err and "1 answers" in err
    assert "PIDCLI7" not in err  # no patient data at INFO


def test_index_cache_from_the_config_file_written_on_stop_and_used_atstart_command(
    db: Path, tmp_path: Path
) -> None:
    write_wl(db / "WLM" / "a.wl", PatientID="PIDCACHE1", PatientName="SECRET^CACHED")
    config = tmp_path / "wlmserver.toml"
    config.write_text('[server]\nindex-cache = "cache"\nbind = "127.0.0.1"\n')
    command = [sys.executable, "-m", "wlmserver", "--config", str(config), "-dfp", str(db), "0"]
    cache = tmp_path / "cache" / "index.wlmcache"  # beside the configuration file
    logs = []
    for _ in range(2):
        process, port, _ = start_command(command)
        try:
            query = Dataset()
            query.PatientID = ""
            answers = [a for s, a in find(port, query) if s == 0xFF00]
            assert [a.PatientID for a in answers] == ["PIDCACHE1"]
        finally:
            logs.append(_stop(process))
        assert cache.is_file() and cache.stat().st_mode & 0o777 == 0o600
    assert "no index cache" in logs[0] and "index cache" in logs[0] and "written" in logs[0]
    assert "index cache" in logs[1] and "read: 1 files" in logs[1]
    assert "0 files were out of date" in logs[1] and "written" not in logs[1]
    assert "SECRET" not in "".join(logs)


def test_patient_data_is_not_logged_at_info(db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", PatientName="SECRET^PATIENT", PatientID="SECRETID")
    process, port, _ = start_command(
        [sys.executable, "-m", "wlmserver", "-dfp", str(db), "--bind", "127.0.0.1", "0"]
    )
    try:
        query = Dataset()
        query.PatientName = "SECRET*"
        query.PatientID = ""
        assert len(find(port, query)) == 2
        # values pydicom finds invalid are warned about with the value itself
        query.PatientBirthDate = "SECRETDATE"
        query.PatientSex = "SECRET-SEX-TOO-LONG-FOR-CS"
        assert find(port, query)[-1][0] == 0xA900
    finally:
        err = _stop(process)
    assert "SECRET" not in err


@pytest.mark.skipif(shutil.which("wlmserver") is None, reason="package not installed")
def test_console_script_without_arguments_serves_the_bundled_database(tmp_path: Path) -> None:
    process, port, line = start_command(["wlmserver", "--bind", "127.0.0.1", "0"], cwd=tmp_path)
    try:
        assert "wlistdb" in line
        assert "findscu -W -aec WLMSERVER" in line  # the server's own AE title folder first
        aets = re.search(r"AE titles: ([^)]*)\)", line)
        assert aets and aets.group(1) != "none"
        first = aets.group(1).split(", ")[0]
        query = Dataset()
        query.PatientName = ""
        query.ScheduledProcedureStepSequence = [Dataset()]
        answers = [a for s, a in find(port, query, aet=first) if s == 0xFF00]
        assert answers and all(len(a.ScheduledProcedureStepSequence) == 1 for a in answers)
    finally:
        err = _stop(process)
    assert "serving the bundled EXAMPLE database" in err and "fictional" in err


@pytest.mark.parametrize("tool", ["create", "check", "query", "explain", "mpps"])
def test_tools_are_subcommands(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    from wlmserver.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main([tool, "--help"])
    assert exit_info.value.code == 0
    assert f"wlmserver {tool}" in capsys.readouterr().out


def _served_ids(port: int) -> list[str]:
    query = Dataset()
    query.PatientID = ""
    return [str(a.PatientID) for s, a in find(port, query) if s == 0xFF00]


def test_sighup_rescans_the_database(db: Path) -> None:
    """SIGHUP killed the server (rc 129); it now brings the index in line with the disk
    (here the watcher polls once an hour, so only the rescan can see the new file)."""
    write_wl(db / "WLM" / "a.wl", PatientID="BEFORE")
    args = ["-dfp", str(db), "--bind", "127.0.0.1", "--poll", "3600", "--rescan-interval", "0"]
    process, port, _ = start_command([sys.executable, "-m", "wlmserver", *args, "0"])
    try:
        write_wl(db / "WLM" / "b.wl", PatientID="AFTER")
        assert _served_ids(port) == ["BEFORE"]
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while _served_ids(port) != ["BEFORE", "AFTER"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(_served_ids(port)) == ["AFTER", "BEFORE"]
        assert process.poll() is None
    finally:
        err = _stop(process)
    assert "SIGHUP: rescan done, 1 files were out of date" in err


def test_stop_with_a_silent_peer_and_a_second_sigterm(db: Path) -> None:
    """A peer that connected and said nothing made the stop raise InvalidEventError (an
    A-ABORT before any association request) with a traceback; a second SIGTERM raised
    SystemExit, which waited for association threads. Now: no traceback, and the second
    signal ends the process at once (130) if the first stop is still running."""
    process, port, _ = start_command(
        [sys.executable, "-m", "wlmserver", "-dfp", str(db), "--bind", "127.0.0.1", "0"]
    )
    assert process.stderr is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # a peer that says nothing
        process.send_signal(signal.SIGTERM)
        lines = []
        for line in process.stderr:  # ends when the process closes stderr
            lines.append(line)
            if "shutting down" in line:
                process.send_signal(signal.SIGTERM)
                break
        _, rest = process.communicate(timeout=15)
    err = "".join(lines) + rest
    assert process.returncode in (130, 0), err  # 0 if the first stop was done by then
    assert "Traceback" not in err and "InvalidEventError" not in err, err


def test_a_port_in_use_is_named(db: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "wlmserver", "-dfp", str(db), "--bind", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retention-days", "0"], "--retention-days: must be a positive whole number"),
        (
            ["--archive-folder", "{tmp}/archive"],
            "--archive-folder {tmp}/archive needs --retention-days",
        ),
        (
            ["--retention-days", "30", "--archive-folder", "{db}/WLM/old"],
            "it is inside the AE folder WLM of the database",
        ),
        (["--retention-days", "30", "--archive-folder", "{db}"], "it is the database root"),
    ],
)
def test_retention_options_are_checked(
    db: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def fill(text: str) -> str:
        return text.format(db=db, tmp=tmp_path)

    with pytest.raises(SystemExit) as info:
        main(["-dfp", str(db), *map(fill, args)])
    assert info.value.code == 2
    assert fill(message) in capsys.readouterr().err


def test_retention_options_reach_the_config(db: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["-dfp", str(db), "--retention-days", "90", "--archive-folder", str(tmp_path / "a")]
    )
    config = config_from_args(args)
    assert config.retention_days == 90 and config.archive_folder == tmp_path / "a"
    assert config.retention.days == 90
    assert config_from_args(build_parser().parse_args([])).retention.active is False


def test_a_second_start_without_any_cache_option_reads_the_cache(
    db: Path, own_cache_folder: Path
) -> None:
    """``wlmserver -dfp DB PORT`` as a wlmscpfs user starts it keeps an index cache in the
    user's cache folder: the second start reads it instead of indexing again (issue 19)."""
    write_wl(db / "WLM" / "a.wl", PatientID="PIDCACHE1")
    query = Dataset()
    query.PatientID = ""
    for run in range(2):
        process, port, _ = start_command([sys.executable, "-m", "wlmserver", "-dfp", str(db), "0"])
        try:
            answers = [a for s, a in find(port, query) if s == 0xFF00]
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert [a.PatientID for a in answers if a is not None] == ["PIDCACHE1"]
        if run == 0:
            assert "no index cache" in err and "indexing fully" in err
        else:
            assert re.search(r"index cache \S+ read: 1 files in 1 AE folders", err), err
            assert "0 files were out of date" in err
    (cache,) = own_cache_folder.glob("*/index.wlmcache")
    assert cache.parent.name.startswith(db.name + "-")


def test_the_listen_backlog_takes_a_burst_of_connections(db: Path) -> None:
    """socketserver's backlog of 5 refuses the sixth connection of a burst (a ward's
    modalities asking at once); the server listens with a longer queue (issue 19)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    from wlmserver.service.server import LISTEN_BACKLOG, WorklistServer

    with WorklistServer(Config(data_files_path=db, port=0, bind="127.0.0.1")) as server:
        out = subprocess.run(
            [ss, "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
        ).stdout
    # for a listening socket, ss's Send-Q column is its backlog
    assert out.split()[2] == str(LISTEN_BACKLOG), out


@pytest.mark.parametrize(
    ("titles", "expected"),
    [
        (None, None),  # no allow-list: findscu's own title
        (("FINDSCU", "CT01"), None),
        (("CT0?", "MR01", "WLMHEALTH", "WLMQUERY"), "WLMQUERY"),  # as deploy/wlmserver.toml
        (("CT*", "MR01"), "MR01"),  # no wildcard, and no profile of its own
        (("CT0?",), "CT00"),  # made from the pattern
    ],
)
def test_the_ready_line_calls_with_a_title_the_allow_lists_admit(
    db: Path, titles: tuple[str, ...] | None, expected: str | None
) -> None:
    """The ready line suggested findscu's default calling AE title FINDSCU, which the
    shipped allow-list refuses (issue 19)."""
    from wlmserver.cli import ready_line
    from wlmserver.config import Config
    from wlmserver.config.access import Access, AllowList
    from wlmserver.config.profiles import Profile, Profiles

    config = Config(
        db,
        access=Access(AllowList(calling_ae_titles=titles)),
        profiles=Profiles((Profile("ct", calling_ae_titles=("CT*",), station_filter=True),)),
    )
    line = ready_line(config)
    aet = f"-aet {expected} " if expected else ""
    assert f"/usr/bin/findscu -W {aet}-aec WLM 127.0.0.1 {{port}} -k PatientName" in line
