"""deploy/: the example configuration is valid, and the units agree with it (README, "Deploying
for real"), so that an option renamed or a path moved cannot leave them stale."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

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
