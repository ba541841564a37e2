"""Every wlmscpfs option has an equivalent or a documented line saying why not: the options
added for it (--arguments, -lc, +x..., +cl, --refuse, --reject, --sleep-*, the accepted
no-ops), and the table "wlmscpfs options" (docs/reference/wlmscpfs.md, and the README's while
it has one), checked against ``wlmscpfs --help`` so that it cannot drift."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import documentation, documented, find, start_wlmserver, stop_wlmserver, write_wl
from pydicom.dataset import Dataset

from wlmserver.cli import main
from wlmserver.config.loader import config_from_args
from wlmserver.config.options import build_parser
from wlmserver.config.parity import expanded_arguments

ROOT = Path(__file__).resolve().parent.parent
WLMSCPFS = "/usr/bin/wlmscpfs"


def test_parity_options_reach_the_config(db: Path) -> None:
    args = build_parser().parse_args(
        [
            "-dfp",
            str(db),
            "--refuse",
            "--reject",
            "--sleep-before",
            "1",
            "--sleep-during",
            "0.5",
            "--sleep-after",
            "2",
            "+xd",
            "+cl",
            "9",
            "-ac",
            "-u",
            "-dhl",
            "104",
        ]
    )
    config = config_from_args(args)
    assert config.port == 104
    assert config.refuse_associations and config.reject_without_implementation_uid
    assert (config.sleep_before_find, config.sleep_during_find, config.sleep_after_find) == (
        1.0,
        0.5,
        2.0,
    )
    assert config.transfer_syntax_preference == "deflated" and config.compression_level == 9
    defaults = config_from_args(build_parser().parse_args([]))
    assert not defaults.refuse_associations and not defaults.reject_without_implementation_uid
    assert defaults.sleep_before_find == defaults.sleep_after_find == 0
    assert defaults.transfer_syntax_preference == "uncompr" and defaults.compression_level == 6


@pytest.mark.parametrize(
    ("argv", "preference"),
    [
        (["+x="], "uncompr"),
        (["--prefer-uncompr"], "uncompr"),
        (["+xe"], "little"),
        (["--prefer-little"], "little"),
        (["+xb"], "big"),
        (["--prefer-big"], "big"),
        (["+xd"], "deflated"),
        (["--prefer-deflated"], "deflated"),
        (["+xi"], "implicit"),
        (["--implicit"], "implicit"),
        (["+xi", "+xb"], "big"),  # the last one counts, as with wlmscpfs
    ],
)
def test_transfer_syntax_options(argv: list[str], preference: str) -> None:
    config = config_from_args(build_parser().parse_args(argv))
    assert config.transfer_syntax_preference == preference


@pytest.mark.parametrize(
    ("argv", "port"),
    [(["11112"], 11112), (["+xb", "104"], 104), (["104", "+xi"], 104), (["+x=", "0"], 0)],
)
def test_plus_options_leave_the_port_alone(argv: list[str], port: int) -> None:
    assert build_parser().parse_args(argv).port == port


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-5"], "'-5' is not a port number"),  # negative-looking: still the port's message
        (["+5"], "unrecognized arguments: +5"),
        (["+xz", "104"], "unrecognized arguments: +xz"),
        (["+ac"], "+ac/--access-control (TCP wrapper host access control) is not supported: "),
        (["--access-control"], "list the hosts allowed with --allow-host"),
        (["+cl", "3"], "+cl/--compression-level only with +xd/--prefer-deflated"),
        (["+xd", "+cl", "10"], "give 0 (uncompressed) to 9 (best compression)"),
        (["--sleep-after", "-1"], "give 0 to 86400 seconds"),
        (["--sleep-before", "soon"], "'soon' is not a number of seconds"),
        (["-lc", "x.ini", "-v"], "-lc/--log-config cannot be combined with -v"),
        (["-lc", "x.ini", "-ll", "debug", "-q"], "cannot be combined with -q, -ll"),
        (["-lc", "x.ini", "--log-json"], "name wlmserver.logs.JsonFormatter as a formatter"),
    ],
)
def test_refused_options_exit_2_with_a_message(
    db: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["-dfp", str(db), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments_prints_each_option_by_its_long_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As ``wlmscpfs --arguments`` (which then serves; here -dfp stops it)."""
    with pytest.raises(SystemExit):
        main(["--arguments", "-dfp", "/nonexistent", "-v", "+xb", "-rff", "#p.dump", "104"])
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        "calling 'wlmserver' with 8 arguments: --arguments --data-files-path /nonexistent "
        "--verbose --prefer-big --request-file-format '#p.dump' 104"
    )


def test_expanded_arguments_keep_what_follows_a_double_dash() -> None:
    assert expanded_arguments(build_parser(), ["-v", "--", "-v"]) == ["--verbose", "--", "-v"]


# -- -lc/--log-config


LOG4CPLUS = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
"""


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.ini", None, "cannot read it: No such file or directory"),
        ("dcmtk.cfg", LOG4CPLUS, "not an INI file: wlmserver reads Python logging configurations"),
        ("empty.ini", "[loggers]\nkeys=root\n", "no [handlers], [formatters] section"),
        ("bad.json", "{version: 1", "JSONDecodeError"),
        ("list.json", "[1, 2]", "the file holds no dictionary of logging settings"),
        ("bad.toml", "version = ", "TOMLDecodeError"),
        ("latin1.ini", b"\xe9", "cannot read it: not UTF-8 text"),
    ],
)
def test_a_log_config_that_cannot_be_used_stops_before_serving(
    db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str | bytes | None,
    message: str,
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["-dfp", str(db), "-lc", str(path), "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("wlmserver: error:")]
    assert line.startswith(f"wlmserver: error: -lc {path}: ")
    assert message in line


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_log_config_the_standard_library_refuses_stops_before_serving(
    db: Path, tmp_path: Path
) -> None:
    """A handler that cannot be made (its file's folder is missing): exit 2, one line."""
    config = {"handlers": {"file": {"class": "logging.FileHandler", "filename": "/nonexistent/x"}}}
    path = tmp_path / "log.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "wlmserver", "-dfp", str(db), "-lc", str(path), "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"wlmserver: error: -lc {path}: ValueError:")
    assert "No such file or directory" in result.stderr and "listening" not in result.stderr


INI = """[loggers]
keys=root

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=file

[handler_file]
class=FileHandler
formatter=plain
args=({path!r}, "a", "utf-8")

[formatter_plain]
format=%(levelname)s %(name)s: %(message)s
"""


def test_log_config_sends_the_log_where_the_file_says(db: Path, tmp_path: Path) -> None:
    write_wl(db / "WLM" / "a.wl", PatientID="PIDLOGCONFIG")
    log = tmp_path / "wlmserver.log"
    config = tmp_path / "logging.ini"
    config.write_text(INI.format(path=str(log)))
    args = ["-dfp", str(db), "--bind", "127.0.0.1", "-lc", str(config), "0"]
    process, port, _ = start_wlmserver(args)
    try:
        query = Dataset()
        query.PatientID = ""
        assert [s for s, _ in find(port, query)] == [0xFF00, 0]
    finally:
        err = stop_wlmserver(process)
    text = log.read_text()
    assert "INFO wlmserver.service.server: listening on port" in text
    assert "C-FIND from TESTSCU" in text and "1 answers" in text
    assert "association TESTSCU -> WLM" in text
    assert "PIDLOGCONFIG" not in text  # no patient data at INFO
    assert "C-FIND from" not in err  # the file's set-up replaced the default one


SAFEGUARDS = """
import logging, sys
from wlmserver import logs
from wlmserver.cli import _every_handler, setup_logging
from wlmserver.config.options import build_parser
setup_logging(build_parser().parse_args(["-lc", sys.argv[1]]))
handlers = _every_handler()
filtered = all(
    any(isinstance(f, logs.RateLimit) for f in h.filters)
    and any(isinstance(f, logs.OneLine) for f in h.filters)
    for h in handlers
)
print(sum(not isinstance(h, logging.NullHandler) for h in handlers), filtered)
print(logging.getLogger("pynetdicom").level, logging.getLogger("pydicom").level)
logging.getLogger("wlmserver.test").info("EVIL\\nFAKE LINE")
"""


@pytest.mark.parametrize(
    ("root", "pynetdicom", "levels"),
    [
        ("INFO", "DEBUG", "30 40"),  # quiet unless wlmserver logs at DEBUG, whatever the file
        ("DEBUG", None, "10 10"),
        ("DEBUG", "ERROR", "40 10"),  # the file may make them quieter
    ],
)
def test_log_config_keeps_the_safeguards(
    tmp_path: Path, root: str, pynetdicom: str | None, levels: str
) -> None:
    log = tmp_path / "x.log"
    handlers = {
        "file": {"class": "logging.FileHandler", "filename": str(log)},
        "err": {"class": "logging.StreamHandler"},
    }
    loggers = {"pynetdicom": {"level": pynetdicom}} if pynetdicom else {}
    settings = {
        "handlers": handlers,
        "root": {"level": root, "handlers": ["file"]},
        "loggers": {"wlmserver": {"handlers": ["err"]}, **loggers},
    }
    path = tmp_path / "log.json"
    path.write_text(json.dumps(settings))
    result = _python(SAFEGUARDS, str(path))
    assert result.returncode == 0, result.stderr
    count, levels_line = result.stdout.splitlines()
    assert count == "2 True"  # the file's two handlers (and the libraries' NullHandlers)
    assert levels_line == levels
    assert log.read_text().splitlines() == ["EVIL\\x0aFAKE LINE"]  # one line, escaped


def test_log_config_toml(tmp_path: Path) -> None:
    pytest.importorskip("tomllib")
    log = tmp_path / "x.log"
    path = tmp_path / "log.toml"
    path.write_text(
        f'[handlers.file]\nclass = "logging.FileHandler"\nfilename = "{log}"\n'
        '[root]\nlevel = "INFO"\nhandlers = ["file"]\n'
    )
    result = _python(SAFEGUARDS, str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1 True", "30 40"]
    assert "EVIL\\x0aFAKE LINE" in log.read_text()


# -- the documented table "wlmscpfs options"


def _wlmscpfs_options() -> list[tuple[str, str]]:
    """(short or "", long) for every option ``wlmscpfs --help`` lists."""
    if not Path(WLMSCPFS).exists():
        pytest.skip("DCMTK's wlmscpfs is not installed")
    result = subprocess.run([WLMSCPFS, "--help"], capture_output=True, text=True, timeout=30)
    options = re.findall(
        r"^ {2,}(?:([-+]\S+) +)?(--[a-z][a-z0-9-]*)", result.stdout + result.stderr, re.M
    )
    assert len(options) >= 40, result.stdout  # the help text was read (3.6.7 lists 40)
    return options


WLMSCPFS_TABLES = documentation("reference/wlmscpfs.md", "### wlmscpfs options")


def _readme_table(text: str = WLMSCPFS_TABLES[0][1]) -> list[tuple[set[str], set[str]]]:
    """(wlmscpfs options, wlmserver options) per row of the table "wlmscpfs options" (in
    docs/reference/wlmscpfs.md, and the README's while it has one)."""
    match = re.search(r"^##+ wlmscpfs options\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, "no section 'wlmscpfs options'"
    rows = []
    for line in match.group(1).splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.split(" | ")
        theirs = set(re.findall(r"`([^`]+)`", cells[0]))
        ours = set(re.findall(r"`([-+][^`\s]*)`", cells[1]))
        rows.append((theirs, ours))
    return rows


@pytest.mark.parametrize(
    ("name", "text"), documented("reference/wlmscpfs.md", "### wlmscpfs options")
)
def test_readme_table_names_every_wlmscpfs_option(name: str, text: str) -> None:
    listed = set().union(*(theirs for theirs, _ in _readme_table(text)))
    missing = [
        " ".join(o for o in option if o)
        for option in _wlmscpfs_options()
        if not all(o in listed for o in option if o)
    ]
    assert not missing, f"wlmscpfs options not in the table of {name}: {missing}"


@pytest.mark.parametrize(
    ("name", "text"), documented("reference/wlmscpfs.md", "### wlmscpfs options")
)
def test_readme_table_claims_only_options_wlmserver_accepts(
    name: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    actions = {name: action for action in parser._actions for name in action.option_strings}
    claimed = set().union(*(ours for _, ours in _readme_table(text)))
    assert {"-dfp", "+xd", "--refuse", "-lc", "--arguments"} <= claimed
    for option in sorted(claimed):
        assert option in actions, f"{name} claims {option}; wlmserver has no such option"
        action = actions[option]
        argv = [option] if action.nargs == 0 else [option, str((action.choices or ["1"])[0])]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version
            assert exc.code == 0, (option, capsys.readouterr().err)
