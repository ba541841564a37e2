"""deploy/: the example configuration is valid, and the units agree with it (README, "Deploying
for real"), so that an option renamed or a path moved cannot leave them stale."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import documentation, start_command, stop_wlmserver

from wlmserver.config import Config
from wlmserver.config.file import load
from wlmserver.config.loader import apply_config_file, certificates_problem, config_from_args
from wlmserver.config.options import build_parser
from wlmserver.service.reload import LOGGING_OPTIONS, RESTART, setting_name

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _unit(name: str) -> dict[str, list[str]]:
    """A unit file's settings, by key, every value of a repeated key in order."""
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _example_text(with_captures: bool) -> str:
    text = (DEPLOY / "wlmserver.toml").read_text(encoding="utf-8")
    if with_captures:  # the guide turns captures on by uncommenting this line
        text = text.replace("# request-file-path = ", "request-file-path = ")
    return text


def _example(tmp_path: Path, with_captures: bool) -> tuple[argparse.Namespace, Config]:
    """The example configuration as the server reads it: its options, and the result."""
    path = tmp_path / "wlmserver.toml"
    path.write_text(_example_text(with_captures), encoding="utf-8")
    file = load(path)
    parser = build_parser()
    apply_config_file(parser, file)
    args = parser.parse_args([])
    config = config_from_args(args, file)
    assert config.profiles.for_calling("CT01").name == "ct"
    return args, config


def test_the_example_configuration_is_accepted(tmp_path: Path) -> None:
    for with_captures in (False, True):
        args, _ = _example(tmp_path, with_captures)
        assert args.data_files_path == Path("/var/lib/wlmserver/wlistdb")
        assert (args.request_file_path is not None) == with_captures


def test_the_unit_matches_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, _ = _example(tmp_path, with_captures=True)
    unit = _unit("wlmserver.service")
    command = shlex.split(unit["ExecStart"][0])
    assert command[0] == "/opt/wlmserver/bin/wlmserver"
    assert command[1:] == ["--config", "/etc/wlmserver/wlmserver.toml"]
    assert unit["ReadOnlyPaths"] == [str(args.data_files_path)]
    assert unit["ReadWritePaths"] == [str(args.request_file_path), str(args.mpps_folder)]
    # the index cache is the unit's CacheDirectory (systemd sets CACHE_DIRECTORY), private to
    # the service: the server's default, no index-cache key needed (issue 19)
    assert args.index_cache is None and not args.no_index_cache
    cache_directory = Path("/var/cache") / unit["CacheDirectory"][0]
    monkeypatch.setenv("CACHE_DIRECTORY", str(cache_directory))
    cache = config_from_args(args).index_cache
    assert cache is not None and cache.parent == cache_directory
    assert cache.name.startswith("wlistdb-")
    assert unit["CacheDirectoryMode"] == ["0700"]
    assert unit["User"] == ["wlmserver"] and unit["SupplementaryGroups"] == ["wlmdata"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["CapabilityBoundingSet"] == [""]  # port above 1023: no privilege
    assert args.port >= 1024


def test_the_health_check_passes_the_example_allow_lists(tmp_path: Path) -> None:
    args, config = _example(tmp_path, with_captures=False)
    command = shlex.split(_unit("wlmserver-healthcheck.service")["ExecStart"][0])
    assert command[:2] == ["/opt/wlmserver/bin/wlmserver", "query"]
    calling = command[command.index("-aet") + 1]
    called = command[command.index("-aec") + 1]
    host, port = command[-2:]
    assert config.access.refusal(calling, called, host) is None
    assert config.access.refusal("FINDSCU", called, host) is not None
    assert called == args.aetitle
    assert int(port) == args.port


def _server_keys(text: str) -> set[str]:
    """The [server] keys of the example, set or commented out (``# key = ...``)."""
    section = text[text.index("[server]") : text.index("[access]")]
    return set(re.findall(r"^#? ?([a-z][a-z-]+) = ", section, flags=re.MULTILINE))


def test_the_examples_reload_comments_agree_with_the_reload() -> None:
    """The example names the keys it holds that need a restart, and only those; the unit's
    reload comment says it re-reads the configuration."""
    text = _example_text(with_captures=False)
    header = text[: text.index("[server]")]
    listed = re.search(r"instead: (.*?); the journal", header, flags=re.DOTALL)
    assert listed, header
    words = {"and", "turning", "on", "or", "off"}  # "and turning TLS on or off (enable-tls)"
    named = set(re.findall(r"[a-z][a-z-]+", listed.group(1))) - words
    restart = {setting_name(f) for f in RESTART} | set(map(setting_name, LOGGING_OPTIONS))
    keys = _server_keys(text)
    assert {k for k in keys if k in restart} <= named  # each one the example holds
    assert named - {"enable-tls"} <= restart  # and only those
    assert {k for k in keys if k not in restart} >= {"max-associations", "add-cert-file"}
    comment = _unit_comments("wlmserver.service", "ExecReload")
    assert "re-read the configuration file" in comment and "NOT" not in comment


def _unit_comments(name: str, key: str) -> str:
    """The comment lines just above a unit file's ``key=`` line."""
    lines = (DEPLOY / name).read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}="))
    above = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):
            break
        above.append(line.lstrip("# "))
    return " ".join(reversed(above))


def test_the_examples_tls_and_certificate_bindings_are_accepted(tmp_path: Path) -> None:
    """Uncommenting the TLS lines and [access.certificates] gives a configuration the loader
    accepts (the bindings need TLS that verifies clients: add-cert-file does)."""
    text = _example_text(with_captures=False)
    for line in (
        "enable-tls = ",
        "add-cert-file = ",
        "tls-port = ",
        "[access.certificates]",
        "CT01 = ",
    ):
        text = text.replace(f"# {line}", line)
    path = tmp_path / "wlmserver.toml"
    path.write_text(text, encoding="utf-8")
    file = load(path)
    parser = build_parser()
    apply_config_file(parser, file)
    config = config_from_args(parser.parse_args([]), file)
    assert config.tls_enabled and config.tls_port == 2762
    assert certificates_problem(config) is None
    assert config.access.certificate_refusal("CT01", frozenset({"CN=ct01.example.org"})) is None
    assert config.access.certificate_refusal("CT01", None) is not None


# -- following the guide with the shipped configuration (issue 19)

FINDSCU = Path("/usr/bin/findscu")


@dataclass(frozen=True)
class Site:
    """The guide's layout in a temporary folder: deploy/wlmserver.toml with its paths under
    ``root``, and the folders of step 2."""

    root: Path
    config: Path

    def path(self, absolute: str) -> Path:
        """Where one of the guide's paths (``/var/lib/wlmserver/...``) is here."""
        return self.root / absolute.lstrip("/")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    text = (DEPLOY / "wlmserver.toml").read_text(encoding="utf-8")
    for prefix in ("/var/lib/wlmserver", "/var/cache/wlmserver"):
        text = text.replace(f'"{prefix}', f'"{tmp_path}{prefix}')
    site = Site(tmp_path, tmp_path / "etc" / "wlmserver" / "wlmserver.toml")
    site.config.parent.mkdir(parents=True)
    site.config.write_text(text, encoding="utf-8")
    # step 2: install -d ... (modes as the guide gives them; the tests run as one user)
    database = site.path("/var/lib/wlmserver/wlistdb")
    database.mkdir(parents=True)
    database.chmod(0o2750)
    before = os.umask(0o027)
    try:
        (database / "WLMSERVER").mkdir()
    finally:
        os.umask(before)
    for private in ("/var/lib/wlmserver/mpps", "/var/cache/wlmserver"):
        site.path(private).mkdir(mode=0o700, parents=True)
    return site


def _line(key: str) -> int:
    """The line of a ``[server]`` key in the shipped configuration."""
    lines = (DEPLOY / "wlmserver.toml").read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith(f"{key} = "))


def _today_order(accession: str = "A100") -> dict[str, object]:
    return {
        "PatientName": "DOE^JANE",
        "PatientID": "P100",
        "AccessionNumber": accession,
        "RequestedProcedureDescription": "CT HEAD",
        "ScheduledStationAETitle": "CT01",
        "Modality": "CT",
        "ScheduledProcedureStepStartDate": datetime.date.today().strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": "0930",
        "ScheduledProcedureStepDescription": "HEAD W/O",
    }


def _wlmserver(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``wlmserver ARGS`` as the guide runs it (``python -m wlmserver``)."""
    return subprocess.run(
        [sys.executable, "-m", "wlmserver", *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def _readme_commands(heading: str, page: str) -> list[str]:
    """The lines of the first ``sh`` block after the heading ``heading`` (without its
    ``#``) in ``docs/<page>``, the same in the README while the README has the section."""
    blocks = []
    for name, text in documentation(page, heading):
        after = text[text.index(f" {heading}\n") :]
        block = after[after.index("```sh\n") + len("```sh\n") :]
        blocks.append((name, block[: block.index("```")].splitlines()))
    assert all(b == blocks[0][1] for _, b in blocks), f"{[n for n, _ in blocks]} differ"
    return blocks[0][1]


def _as_run_here(line: str, port: int, uid: str = "") -> list[str]:
    """A README command line as this test runs it: the guide's port is the test server's,
    ``$UID`` what ``start`` printed; comments left out."""
    words = shlex.split(line.replace('"$UID"', uid), comments=True)
    assert words[0] == "wlmserver", line
    return [str(port) if word == "11112" else word for word in words[1:]]


def test_following_the_guide_with_the_shipped_configuration(site: Site) -> None:
    """The deployment guide's own commands against a server started with the shipped
    configuration: create under umask 077 writes a file the server serves, the ready line's
    findscu and the README's mpps commands are answered, and explain and check --config see
    the configured database and MPPS folder (the completed step hidden, not MATCH)."""
    database = site.path("/var/lib/wlmserver/wlistdb")
    orders = site.root / "orders.json"
    orders.write_text(json.dumps(_today_order()), encoding="utf-8")
    created = _wlmserver("create", "-o", str(database / "WLMSERVER"), str(orders), umask=0o077)
    assert created.returncode == 0, created.stderr
    (written,) = (database / "WLMSERVER").glob("*.wl")
    assert written.stat().st_mode & 0o777 == 0o640  # readable by the folder's group
    assert written.stat().st_gid == database.stat().st_gid
    checked = _wlmserver("check", "--config", str(site.config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    root_line, mpps_line = _line("data-files-path"), _line("mpps-folder")
    assert checked.stderr.startswith(
        f"wlmserver check: database {database} (data-files-path of {site.config}:{root_line}); "
        f"MPPS folder {site.path('/var/lib/wlmserver/mpps')} (mpps-folder of "
        f"{site.config}:{mpps_line}): 0 instances"
    )
    assert "1 scheduled procedure steps served" in checked.stdout
    process, port, ready = start_command(
        [sys.executable, "-m", "wlmserver", "--config", str(site.config), "--bind", "127.0.0.1",
         "0"]
    )  # fmt: skip
    try:
        findscu = shlex.split(ready.split("query it with: ", 1)[1])
        assert findscu[:4] == ["/usr/bin/findscu", "-W", "-aet", "WLMQUERY"]
        if FINDSCU.exists():
            answered = subprocess.run(findscu, capture_output=True, text=True, timeout=60)
            assert answered.returncode == 0, answered.stdout + answered.stderr
            assert "DOE^JANE" in answered.stdout + answered.stderr
        start, query, complete = _readme_commands(
            "`wlmserver mpps`: MPPS without a modality", "mpps.md"
        )
        assert start.startswith("UID=$(wlmserver mpps start ") and start.endswith(")")
        started = _wlmserver(*_as_run_here(start[len("UID=$(") : -1], port))
        assert started.returncode == 0, started.stderr
        uid = started.stdout.strip()
        listed = _wlmserver(*_as_run_here(query, port))
        assert listed.returncode == 0, listed.stderr
        assert "STARTED" in listed.stdout and "1 answers" in listed.stderr
        completed = _wlmserver(*_as_run_here(complete, port, uid))
        assert completed.returncode == 0, completed.stderr
        assert f"N-SET {uid} COMPLETED: Success" in completed.stderr
    finally:
        log = stop_wlmserver(process)
    assert "cannot write the index cache" not in log
    # what the server hides now, explain and check with --config say is hidden
    explained = _wlmserver(
        "explain", "--config", str(site.config), "-aet", "CT01", "-aec", "WLMSERVER"
    )
    assert explained.returncode == 1
    assert explained.stdout.splitlines()[-1] == (
        f"NO     WLMSERVER/{written.name}#1: status COMPLETED (reported by an MPPS) is hidden "
        "(hide-status COMPLETED,DISCONTINUED; a query asking for a status sees it)"
    )
    assert f"(mpps-folder of {site.config}:{mpps_line}): 1 instances" in explained.stderr
    checked = _wlmserver("check", "--config", str(site.config))
    assert "; 0 scheduled procedure steps served (1 hidden by their status, not served)" in (
        checked.stdout
    )


def test_the_health_check_and_echoscu_are_answered(site: Site) -> None:
    """The guide's health check (step 5) against the shipped configuration."""
    process, port, _ = start_command(
        [sys.executable, "-m", "wlmserver", "--config", str(site.config), "--bind", "127.0.0.1",
         "0"]
    )  # fmt: skip
    try:
        command = shlex.split(_unit("wlmserver-healthcheck.service")["ExecStart"][0])
        healthy = _wlmserver(*command[1:-1], str(port))
        assert healthy.returncode == 0, healthy.stderr
        assert "0 answers; final status 0x0000 (Success)" in healthy.stderr
        echoscu = Path("/usr/bin/echoscu")
        if echoscu.exists():
            echo = [str(echoscu), "-aet", "WLMHEALTH", "-aec", "WLMSERVER", "127.0.0.1", str(port)]
            assert subprocess.run(echo, capture_output=True, timeout=60).returncode == 0
    finally:
        stop_wlmserver(process)
