"""The ``wlmserver`` command: parse options (wlmscpfs's names where the idea is the same),
set up logging, and forward to :func:`wlmserver.service.server.run`."""

from __future__ import annotations

import argparse
import configparser
import difflib
import itertools
import json
import logging
import logging.config
import math
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from wlmserver import __version__, logs
from wlmserver.config import DEFAULT_AE_TITLE, DEFAULT_PORT, Config, bundled_database
from wlmserver.config.access import Access, AllowList, parse_network, valid_ae_pattern
from wlmserver.config.file import ConfigFile, ConfigFileError
from wlmserver.config.file import load as load_config_file
from wlmserver.config.forward import ForwardTarget, valid_ae_title
from wlmserver.config.profiles import Profiles
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.matching.encoding import DEFAULT_DEFLATE_LEVEL
from wlmserver.matching.stepstatus import DEFAULT_HIDDEN, parse_statuses
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE
from wlmserver.store.index import is_safe_ae_title
from wlmserver.store.mpps import folder_problem
from wlmserver.store.retention import archive_problem

LOG_LEVELS = {
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def _mebibytes(text: str) -> int:
    """A size in MiB (a positive number) as bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if not 0 < value <= 4096:
        raise argparse.ArgumentTypeError(f"{text} MiB: give a size from 0 to 4096 MiB")
    return int(value * 1024 * 1024)


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _step_statuses(text: str) -> frozenset[str]:
    try:
        return parse_statuses(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or a positive whole number")
    return value


def _ae_pattern(text: str) -> str:
    if not valid_ae_pattern(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an AE title (1 to 16 characters)")
    return text.strip()


def _forward_target(text: str) -> ForwardTarget:
    try:
        return ForwardTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ae_title(text: str) -> str:
    if not valid_ae_title(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an AE title (1 to 16 characters, no backslash or control character)"
        )
    return text


def _network(text: str) -> str:
    try:
        parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


#: ``wlmserver <tool> ...``: the tools beside the server, by name -> module with ``main(argv)``.
TOOLS = {
    "check": "wlmserver.tools.check",
    "create": "wlmserver.tools.create",
    "explain": "wlmserver.tools.explain",
    "mpps": "wlmserver.tools.mpps",
    "query": "wlmserver.tools.client",
}


def holds_worklist_files(folder: Path) -> bool:
    """Whether a folder holds ``.wl`` files itself (an AE folder, not a database root)."""
    from wlmserver.store.formats import Formats

    return Formats().holds_served_files(folder)


def positional_hint(text: str) -> str:
    """What to type instead, for a word given where ``wlmserver`` takes only a port.

    Examples
    --------
    >>> positional_hint("qurey")
    "'qurey' is not a port: did you mean 'wlmserver query'?"
    """
    path = Path(text)
    quoted = shlex.quote(text)
    if path.is_dir():
        if holds_worklist_files(path) and not holds_worklist_files(path.parent):
            root = shlex.quote(str(path.parent))
            return (
                f"'{text}' is an AE folder (it holds .wl files): to serve it, give its database "
                f"root: -dfp {root} [port] (it is then served as AE title {path.name!r})"
            )
        return f"'{text}' is a folder: to serve it, use -dfp {quoted} [port]"
    if path.exists():
        return (
            f"'{text}' is a file, not a port: 'wlmserver check {quoted}' says whether it would "
            "be served; to serve a database, use -dfp ROOT [port]"
        )
    close = difflib.get_close_matches(text.lower(), TOOLS, n=1)
    if close:
        return f"'{text}' is not a port: did you mean 'wlmserver {close[0]}'?"
    if "/" in text or text.startswith((".", "~")):
        return f"'{text}' is not a port, and there is no such folder (a database root: -dfp ROOT)"
    return (
        f"'{text}' is not a port number: 'wlmserver [options] [port]' serves (-dfp ROOT for the "
        f"database); the tools are wlmserver {' | '.join(TOOLS)}"
    )


def _port(text: str) -> int:
    """The port positional: 0 to 65535, or an error saying what to type instead."""
    if text.isdigit():
        if int(text) > 65535:
            raise argparse.ArgumentTypeError(f"port {text}: a port is 0 to 65535")
        return int(text)
    raise argparse.ArgumentTypeError(positional_hint(text))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose port messages stand alone (they say what to type)."""

    def error(self, message: str) -> NoReturn:
        super().error(message.removeprefix("argument port: "))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its own function, so ``main(argv)`` can be tested)."""
    p = _Parser(
        prog="wlmserver",
        description="DICOM Modality Worklist SCP serving <root>/<CalledAETitle>/*.wl "
        "(the wlmscpfs layout) from a live, watched index.",
        epilog="tools: wlmserver create | check | query | explain | mpps (each with --help)",
        allow_abbrev=False,
        prefix_chars="-+",  # wlmscpfs's +x... options
    )
    p.add_argument(
        "port",
        nargs="?",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free port)",
    )
    p.add_argument("--version", action="version", version=f"wlmserver {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read options, allow-lists and modality profiles from this TOML file "
        "(command-line options override its [server] table)",
    )
    g = p.add_argument_group("logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="one line per query (default)")
    g.add_argument(
        "-d",
        "--debug",
        action="store_true",
        help="debug: also each query identifier (patient data) and DICOM traffic",
    )
    g.add_argument("-ll", "--log-level", choices=sorted(LOG_LEVELS), help="set the level")
    g.add_argument(
        "--log-json",
        action="store_true",
        help="log one JSON object per line (with the fields of each query and association)",
    )
    g = p.add_argument_group("database")
    g.add_argument(
        "-dfp",
        "--data-files-path",
        type=Path,
        default=None,
        help="database root holding one folder per AE title "
        "(default: the bundled example wlistdb/)",
    )
    g.add_argument(
        "-efr",
        "--enable-file-reject",
        dest="reject_incomplete",
        action="store_true",
        default=True,
        help="do not serve entries lacking a Type 1 attribute (default)",
    )
    g.add_argument(
        "-dfr",
        "--disable-file-reject",
        dest="reject_incomplete",
        action="store_false",
        help="serve incomplete entries too (still logged)",
    )
    g.add_argument(
        "--any-aet",
        metavar="FOLDER",
        help="serve this AE folder for called AE titles that have none",
    )
    g.add_argument(
        "--poll",
        type=_seconds,
        metavar="SECONDS",
        help="poll the database every SECONDS instead of using inotify (network shares)",
    )
    g.add_argument(
        "--rescan-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="full consistency rescan interval (default 60; 0 turns it off)",
    )
    g.add_argument(
        "--json-drops",
        action="store_true",
        help="also serve *.json drop files (the JSON 'wlmserver create' reads)",
    )
    g.add_argument(
        "--max-file-size",
        type=_mebibytes,
        default=DEFAULT_MAX_FILE_SIZE,
        metavar="MIB",
        help="do not read dropped files larger than MIB mebibytes (default "
        f"{DEFAULT_MAX_FILE_SIZE // (1024 * 1024)})",
    )
    g.add_argument(
        "--follow-links",
        action="store_true",
        help="serve files and AE folders whose symbolic links lead out of the database root "
        "(by default they are not served)",
    )
    g.add_argument(
        "--index-cache",
        type=Path,
        metavar="DIR",
        help="keep the index in DIR between runs, so a restart answers in seconds (each "
        "file is checked before its cached entries are used; patient data: keep DIR private, "
        "e.g. /var/cache/wlmserver)",
    )
    g.add_argument(
        "--index-workers",
        type=_non_negative,
        metavar="N",
        help="read files in N worker processes when many are to be read (the first index); "
        "0: in the server's own process (default: one per CPU, none on one CPU)",
    )
    g.add_argument(
        "--mpps-folder",
        type=Path,
        metavar="DIR",
        help="keep the MPPS instances modalities send (N-CREATE, N-SET) in DIR, one DICOM "
        "file each (default: ROOT/.mpps, never served as an AE folder; patient data: keep "
        "DIR private)",
    )
    g.add_argument(
        "--hide-status",
        action="append",
        type=_step_statuses,
        metavar="STATUS[,STATUS]",
        help="do not answer steps whose status (the file's, or the one an MPPS reported) is "
        "one of these (repeatable; none: hide nothing; default: COMPLETED,DISCONTINUED); a "
        "query that asks for a status gets it anyway",
    )
    g.add_argument(
        "--retention-days",
        type=_positive,
        metavar="N",
        help="do not serve steps scheduled more than N days ago (by their scheduled start "
        "date; a step scheduled exactly N days ago is still served; default: serve every step)",
    )
    g.add_argument(
        "--archive-folder",
        type=Path,
        metavar="DIR",
        help="with --retention-days: move files whose every step is past retention to "
        "DIR/<AETitle>/ (never deleted, never overwritten; checked hourly and after midnight; "
        "not inside an AE folder; patient data: keep DIR private)",
    )
    g.add_argument(
        "--mpps-forward",
        type=_forward_target,
        metavar="AET@HOST:PORT",
        help="forward every N-CREATE and N-SET accepted to this MPPS SCP (the RIS), from a "
        "queue on disk (MPPS folder/forward) that survives restarts and outages",
    )
    g.add_argument(
        "--mpps-forward-aet",
        type=_ae_title,
        metavar="AET",
        help="our calling AE title towards the --mpps-forward SCP (default: -aet)",
    )
    g.add_argument(
        "-rfp",
        "--request-file-path",
        type=Path,
        metavar="DIR",
        help="write each C-FIND request into DIR (patient data: keep DIR private)",
    )
    g.add_argument(
        "-rff",
        "--request-file-format",
        default="#t.dump",
        metavar="FORMAT",
        help="request file names: #a calling AE, #c called AE, #i process ID, #p patient ID, "
        "#t time; .dump/.txt: dcmdump text, else DICOM (default #t.dump)",
    )
    g = p.add_argument_group("matching and answers")
    g.add_argument(
        "-nse",
        "--no-sq-expansion",
        action="store_true",
        help="do not expand an empty SPS item in a query to the standard SPS keys",
    )
    g.add_argument(
        "--pn-case-insensitive",
        action="store_true",
        help="match person names insensitive to case and accents",
    )
    g.add_argument(
        "--no-fail",
        action="store_true",
        help="answer an invalid query with success and no matches, not a failure",
    )
    cs = g.add_mutually_exclusive_group()
    cs.add_argument(
        "-csk",
        "--keep-char-set",
        dest="charset",
        action="store_const",
        const=CharsetPolicy.FILE,
        default=CharsetPolicy.FILE,
        help="non-ASCII answers in the file's character set (default)",
    )
    cs.add_argument(
        "-cs0",
        "--return-no-char-set",
        dest="charset",
        action="store_const",
        const=CharsetPolicy.FILE,
        help="ASCII answers carry no Specific Character Set (always true); "
        "non-ASCII ones are still labelled, as with -csk",
    )
    cs.add_argument(
        "-cs1",
        "--return-iso-ir-100",
        dest="charset",
        action="store_const",
        const=CharsetPolicy.LATIN1,
        help="non-ASCII answers in ISO_IR 100 when it can encode them",
    )
    g = p.add_argument_group("access control (the configuration file has per-AE-title lists)")
    g.add_argument(
        "--allow-calling-aet",
        action="append",
        type=_ae_pattern,
        metavar="AET",
        help="accept associations only from this calling AE title (* and ? wildcards; "
        "repeat for more); others are rejected, 'calling AE title not recognized'",
    )
    g.add_argument(
        "--allow-host",
        action="append",
        type=_network,
        metavar="ADDRESS[/BITS]",
        help="accept associations only from this address or network (repeat for more)",
    )
    g = p.add_argument_group("network")
    g.add_argument(
        "--bind",
        default="",
        metavar="ADDRESS",
        help="address to listen on (default: all interfaces)",
    )
    g.add_argument(
        "-aet",
        "--aetitle",
        default=DEFAULT_AE_TITLE,
        help=f"the server's own AE title (default {DEFAULT_AE_TITLE})",
    )
    g.add_argument(
        "-ta",
        "--acse-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="timeout for ACSE messages (default 30)",
    )
    g.add_argument(
        "-td",
        "--dimse-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="timeout for DIMSE messages (default unlimited)",
    )
    g.add_argument(
        "--max-associations",
        type=int,
        default=50,
        help="parallel associations at most (default 50)",
    )
    g.add_argument(
        "--max-associations-per-peer",
        type=_positive,
        default=10,
        metavar="N",
        help="parallel associations of one peer host at most, and its connections still "
        "waiting for their association request (default 10)",
    )
    g.add_argument(
        "--max-identifier-size",
        type=_positive,
        default=65536,
        metavar="BYTES",
        help="refuse a C-FIND identifier longer than BYTES (status 0xC000; default 65536)",
    )
    g.add_argument(
        "--max-value-length",
        type=_positive,
        default=1024,
        metavar="CHARS",
        help="refuse a query value longer than CHARS characters (status 0xC000; default 1024)",
    )
    g.add_argument(
        "--max-answers",
        type=_non_negative,
        default=0,
        metavar="N",
        help="answers per query at most, then status 0xA700 Out of Resources (default 0: no limit)",
    )
    g.add_argument(
        "-pdu",
        "--max-pdu",
        type=int,
        default=16384,
        metavar="BYTES",
        help="maximum PDU size received, 4096..131072 (default 16384)",
    )
    g.add_argument(
        "-s",
        "--single-process",
        action="store_true",
        help="accepted for wlmscpfs compatibility (wlmserver is one process)",
    )
    g.add_argument(
        "--fork",
        action="store_true",
        help="accepted for wlmscpfs compatibility (associations run in threads)",
    )
    add_wlmscpfs_parity_options(p)
    add_tls_options(p)
    return p


# -- wlmscpfs parity: the options of wlmscpfs not covered above (README: "wlmscpfs options")


def _sleep_seconds(text: str) -> float:
    """Seconds to sleep: 0 or more (wlmscpfs takes whole seconds; fractions are fine here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 <= value <= 86400):
        raise argparse.ArgumentTypeError(f"{text}: give 0 to 86400 seconds")
    return value


def _compression_level(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 9):
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (uncompressed) to 9 (best compression)")
    return int(text)


def add_wlmscpfs_parity_options(p: argparse.ArgumentParser) -> None:
    """The rest of wlmscpfs's options (the parser needs ``prefix_chars="-+"``)."""
    g = p.add_argument_group("wlmscpfs: general")
    g.add_argument(
        "--arguments",
        action="store_true",
        help="print the command line, each option by its long name, then serve",
    )
    g.add_argument(
        "-lc",
        "--log-config",
        type=Path,
        metavar="FILE",
        help="configure logging from FILE instead of -q/-v/-d/-ll: Python's logging INI "
        "format (logging.config.fileConfig), or a dictConfig .json or .toml file",
    )
    g = p.add_argument_group("wlmscpfs: preferred network transfer syntaxes")
    syntaxes = [
        ("+x=", "--prefer-uncompr", "uncompr", "prefer explicit VR local byte order (default)"),
        ("+xe", "--prefer-little", "little", "prefer explicit VR little endian"),
        ("+xb", "--prefer-big", "big", "prefer explicit VR big endian"),
        ("+xd", "--prefer-deflated", "deflated", "prefer deflated explicit VR little endian"),
        ("+xi", "--implicit", "implicit", "accept implicit VR little endian only"),
    ]
    for short, long, const, text in syntaxes:
        g.add_argument(
            short,
            long,
            dest="transfer_syntax_preference",
            action="store_const",
            const=const,
            default="uncompr",
            help=text,
        )
    g.add_argument(
        "+cl",
        "--compression-level",
        type=_compression_level,
        default=None,
        metavar="LEVEL",
        help="deflate level with +xd: 0 uncompressed, 1 fastest, 9 best (default 6)",
    )
    g = p.add_argument_group("wlmscpfs: testing SCUs")
    g.add_argument("--refuse", action="store_true", help="refuse every association")
    g.add_argument(
        "--reject",
        action="store_true",
        help="reject an association request without an Implementation Class UID",
    )
    for when, text in [
        ("before", "before matching each query"),
        ("during", "before each response of a query"),
        ("after", "after the final response of a query"),
    ]:
        g.add_argument(
            f"--sleep-{when}",
            dest=f"sleep_{when}_find",
            type=_sleep_seconds,
            default=0.0,
            metavar="SECONDS",
            help=f"sleep SECONDS {text} (default 0)",
        )
    g = p.add_argument_group("wlmscpfs: host access and VRs (see the README's wlmscpfs table)")
    g.add_argument(
        "-ac",
        "--access-full",
        dest="access_control",
        action="store_false",
        default=False,
        help="accept connections from any host (default)",
    )
    g.add_argument(
        "+ac",
        "--access-control",
        dest="access_control",
        action="store_true",
        help="not supported (TCP wrapper rules): stops with an error; see --allow-host",
    )
    g.add_argument(
        "+u",
        "--enable-new-vr",
        dest="new_vrs",
        action="store_true",
        default=True,
        help="UN, UT and later VRs are always sent as they are (default)",
    )
    g.add_argument(
        "-u",
        "--disable-new-vr",
        dest="new_vrs",
        action="store_false",
        help="accepted; has no effect",
    )
    g.add_argument(
        "-dhl",
        "--disable-host-lookup",
        action="store_true",
        help="accepted; wlmserver never looks host names up",
    )


def check_wlmscpfs_parity_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> None:
    """Refuse the combinations wlmscpfs refuses, and ``+ac`` (exit status 2)."""
    if args.access_control:
        parser.error(
            "+ac/--access-control (TCP wrapper host access control) is not supported: "
            "list the hosts allowed with --allow-host"
        )
    if args.compression_level is not None and args.transfer_syntax_preference != "deflated":
        parser.error("+cl/--compression-level only with +xd/--prefer-deflated")
    if args.log_config is not None:
        given = [
            name
            for name, value in (
                ("-q", args.quiet),
                ("-v", args.verbose),
                ("-d", args.debug),
                ("-ll", args.log_level),
                ("--log-json", args.log_json),
            )
            if value
        ]
        if given:
            json_hint = (
                " (JSON lines: name wlmserver.logs.JsonFormatter as a formatter in it)"
                if args.log_json
                else ""
            )
            parser.error(
                f"-lc/--log-config cannot be combined with {', '.join(given)}: the file sets "
                f"the levels and formats{json_hint}"
            )


def expanded_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The command line with each option by its long name, as wlmscpfs's ``--arguments``
    prints it.

    Examples
    --------
    >>> expanded_arguments(build_parser(), ["-dfp", "db", "-v", "+xb", "-rff", "-v", "104"])
    ['--data-files-path', 'db', '--verbose', '--prefer-big', '--request-file-format', '-v', '104']
    """
    actions = {name: action for action in parser._actions for name in action.option_strings}
    out: list[str] = []
    words = iter(argv)
    for word in words:
        action = actions.get(word)
        if word == "--" or action is None:
            out.append(word)
            if word == "--":
                out.extend(words)
            continue
        longs = [name for name in action.option_strings if name.startswith("--")]
        out.append(longs[0] if longs else word)
        if action.nargs is None:  # one value follows, whatever it looks like
            out.extend(list(itertools.islice(words, 1)))
    return out


class LogConfigError(Exception):
    """A ``-lc`` file that cannot be read or used (the message is one line)."""


_NOT_LOG4CPLUS = (
    "wlmserver reads Python logging configurations (an INI file for logging.config."
    "fileConfig, or a dictConfig .json or .toml file), not DCMTK's log4cplus ones"
)


def load_log_config(path: Path) -> None:
    """Configure logging from a file, as ``-lc`` does.

    A ``.json`` or ``.toml`` file holds a :func:`logging.config.dictConfig` dictionary (its
    ``version`` defaults to 1); any other file is in the INI format of
    :func:`logging.config.fileConfig`. Loggers that exist already (wlmserver's own) stay
    enabled unless the file says ``disable_existing_loggers``.

    Raises
    ------
    LogConfigError
        The file cannot be read, or is not a logging configuration Python can apply.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LogConfigError(f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LogConfigError("cannot read it: not UTF-8 text") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".json", ".toml"):
            if suffix == ".json":
                settings = json.loads(text)
            else:
                import tomllib

                settings = tomllib.loads(text)
            if not isinstance(settings, dict):
                raise ValueError("the file holds no dictionary of logging settings")
            settings.setdefault("version", 1)
            settings.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(settings)
            return
        ini = configparser.ConfigParser()
        try:
            ini.read_string(text, source=str(path))
        except configparser.Error:
            raise LogConfigError(f"not an INI file: {_NOT_LOG4CPLUS}") from None
        missing = [s for s in ("loggers", "handlers", "formatters") if not ini.has_section(s)]
        if missing:
            sections = ", ".join(f"[{s}]" for s in missing)
            raise LogConfigError(f"no {sections} section: {_NOT_LOG4CPLUS}")
        logging.config.fileConfig(ini, disable_existing_loggers=False)
    except LogConfigError:
        raise
    except Exception as exc:  # what the standard library raises varies: say what it said
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        message = " ".join(f"{type(exc).__name__}: {exc}{cause}".split())
        raise LogConfigError(message) from None


def _every_handler() -> list[logging.Handler]:
    """The handlers of the root logger and of every other logger, once each."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in list(logging.root.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            seen.setdefault(id(handler), handler)
    return list(seen.values())


# -- end of wlmscpfs parity


# --------------------------------------------------------------------------- TLS
#: ``-rc``, ``-vc``, ``-ic``: option, long option, ``Config.tls_peer_cert``, help.
PEER_CERT_OPTIONS = (
    (
        "-rc",
        "--require-peer-cert",
        "require",
        "require a client certificate signed by a trusted one (default with +cf or +cd)",
    ),
    ("-vc", "--verify-peer-cert", "verify", "verify a client certificate if one is presented"),
    (
        "-ic",
        "--ignore-peer-cert",
        "ignore",
        "do not ask for a client certificate (default without +cf and +cd)",
    ),
)


def add_tls_options(p: argparse.ArgumentParser) -> None:
    """The TLS options, with the names of DCMTK's TLS-capable tools (storescp, findscu)."""
    g = p.add_argument_group(
        "transport layer security (TLS 1.2 or 1.3, BCP 195; PS3.15 Annex B)",
    )
    g.add_argument(
        "+tls",
        "--enable-tls",
        dest="tls",
        nargs=2,
        type=Path,
        metavar=("KEY", "CERT"),
        help="serve TLS with this PEM private key and certificate (on the port, or on "
        "--tls-port beside plain TCP)",
    )
    g.add_argument(
        "+cf",
        "--add-cert-file",
        dest="tls_ca_files",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="trust the PEM certificates in FILE (CAs or self-signed clients) to verify "
        "clients (repeatable)",
    )
    g.add_argument(
        "+cd",
        "--add-cert-dir",
        dest="tls_ca_dirs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="trust the PEM certificates in the files of DIR (repeatable)",
    )
    peer = g.add_mutually_exclusive_group()
    for short, long, mode, text in PEER_CERT_OPTIONS:
        peer.add_argument(
            short, long, dest="tls_peer_cert", action="store_const", const=mode, help=text
        )
    g.add_argument(
        "--tls-port",
        type=_tls_port,
        metavar="PORT",
        help="serve TLS on PORT and plain TCP on the port (default: with +tls, the port "
        "is TLS only)",
    )


def _tls_port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0 to 65535")
    return int(text)


def tls_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS fields of :class:`Config` from parsed arguments."""
    key, cert = args.tls if args.tls else (None, None)
    return {
        "tls_key": key,
        "tls_cert": cert,
        "tls_ca_files": tuple(args.tls_ca_files),
        "tls_ca_dirs": tuple(args.tls_ca_dirs),
        "tls_peer_cert": args.tls_peer_cert,
        "tls_port": args.tls_port,
    }


def check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace, config: Config) -> None:
    """Refuse TLS options that do not go together, and TLS files the server cannot use (one
    line naming the file), before the server starts."""
    from wlmserver.service.tls import TlsSetupError, server_context

    if args.tls is None:
        needs_tls = [
            ("+cf", bool(args.tls_ca_files)),
            ("+cd", bool(args.tls_ca_dirs)),
            ("--tls-port", args.tls_port is not None),
            *((o[0], args.tls_peer_cert == o[2]) for o in PEER_CERT_OPTIONS),
        ]
        for option, given in needs_tls:
            if given:
                parser.error(f"{option} needs +tls KEY CERT (the server's key and certificate)")
        return
    trusted = args.tls_ca_files or args.tls_ca_dirs
    if args.tls_peer_cert in ("require", "verify") and not trusted:
        option = next(o[0] for o in PEER_CERT_OPTIONS if o[2] == args.tls_peer_cert)
        parser.error(
            f"{option} needs trusted certificates to verify clients with: +cf FILE or +cd DIR"
        )
    if args.tls_port is not None and args.tls_port == args.port and args.port != 0:
        parser.error(f"--tls-port {args.tls_port} is the plain TCP port too: give another one")
    try:
        server_context(config)
    except TlsSetupError as exc:
        parser.error(str(exc))


def _tls_ready_hint(config: Config) -> str:
    """What to add to the findscu command to query over TLS."""
    if not config.tls_enabled:
        return ""
    client = "+tla" if config.tls_peer_cert_mode == "ignore" else "+tls CLIENT.key CLIENT.pem"
    return (
        f"; TLS on port {{tls_port}}: add {client} +cf CA.pem (the CA of the server's certificate)"
    )


def config_from_args(args: argparse.Namespace, file: ConfigFile | None = None) -> Config:
    """Turn parsed arguments (and the configuration file's tables) into the server's
    configuration."""
    titles = tuple(args.allow_calling_aet) if args.allow_calling_aet is not None else None
    hosts = (
        tuple(parse_network(h) for h in args.allow_host) if args.allow_host is not None else None
    )
    access = Access(
        AllowList(titles, hosts), file.access.called if file is not None else Access().called
    )
    return Config(
        data_files_path=(args.data_files_path or bundled_database()).resolve(),
        port=args.port,
        bind=args.bind,
        ae_title=args.aetitle,
        reject_incomplete=args.reject_incomplete,
        expand_empty_sps=not args.no_sq_expansion,
        charset_policy=args.charset,
        pn_case_insensitive=args.pn_case_insensitive,
        fail_invalid_query=not args.no_fail,
        any_aet_folder=args.any_aet,
        acse_timeout=args.acse_timeout,
        dimse_timeout=args.dimse_timeout,
        max_associations=args.max_associations,
        max_associations_per_peer=args.max_associations_per_peer,
        max_identifier_size=args.max_identifier_size,
        max_value_length=args.max_value_length,
        max_answers=args.max_answers,
        log_json=args.log_json,
        max_pdu=args.max_pdu,
        poll=args.poll,
        rescan_interval=args.rescan_interval,
        request_file_path=args.request_file_path,
        request_file_format=args.request_file_format,
        json_drops=args.json_drops,
        max_file_size=args.max_file_size,
        follow_links=args.follow_links,
        index_cache=args.index_cache,
        index_workers=args.index_workers,
        mpps_folder=args.mpps_folder,
        hide_statuses=(
            frozenset().union(*args.hide_status) if args.hide_status is not None else DEFAULT_HIDDEN
        ),
        retention_days=args.retention_days,
        archive_folder=args.archive_folder,
        mpps_forward=args.mpps_forward,
        mpps_forward_aet=args.mpps_forward_aet,
        access=access,
        profiles=file.profiles if file is not None else Profiles(),
        config_file=file.path if file is not None else None,
        # wlmscpfs parity
        refuse_associations=args.refuse,
        reject_without_implementation_uid=args.reject,
        sleep_before_find=args.sleep_before_find,
        sleep_during_find=args.sleep_during_find,
        sleep_after_find=args.sleep_after_find,
        transfer_syntax_preference=args.transfer_syntax_preference,
        compression_level=(
            DEFAULT_DEFLATE_LEVEL if args.compression_level is None else args.compression_level
        ),
        **tls_settings(args),
    )


def apply_config_file(parser: argparse.ArgumentParser, file: ConfigFile) -> None:
    """Make the file's ``[server]`` keys (command-line long option names) and its global
    ``[access]`` lists the parser's defaults, so that the command line overrides them.

    A relative folder or file path is relative to the configuration file's folder.

    Raises
    ------
    ConfigFileError
        A key that is not an option, or a value the option does not take; it names the line.
    """
    actions = {
        opt[2:]: action
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--")
    }
    actions.update({a.dest: a for a in parser._actions if not a.option_strings})  # the port
    for name in ("help", "version", "config"):
        actions.pop(name, None)
    defaults: dict[str, object] = {}
    for option in file.server:
        key = option.name.replace("_", "-")
        action = actions.get(key)
        dotted = f"server.{option.name}"
        if action is None:
            close = difflib.get_close_matches(key, actions, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise file.error(
                dotted, f"not a command-line option; {hint}(see wlmserver --help: long names)"
            )
        try:
            value = _option_value(parser, action, option.value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise file.error(dotted, str(exc) or "invalid value") from None
        defaults[action.dest] = _beside(file.path, value)
    allow = file.access.everyone  # [access] and [server] lists add up
    if allow.calling_ae_titles is not None:
        before = defaults.get("allow_calling_aet") or []
        defaults["allow_calling_aet"] = [*before, *allow.calling_ae_titles]  # type: ignore[misc]
    if allow.hosts is not None:
        before = defaults.get("allow_host") or []
        defaults["allow_host"] = [*before, *(str(h) for h in allow.hosts)]  # type: ignore[misc]
    parser.set_defaults(**defaults)


def _beside(config_file: Path, value: object) -> object:
    """A relative path (or list of them) of the configuration file made relative to its
    folder, not to where the server runs."""
    if isinstance(value, list):
        return [_beside(config_file, v) for v in value]
    if isinstance(value, Path) and not value.is_absolute():
        return config_file.parent / value
    return value


def _option_value(
    parser: argparse.ArgumentParser, action: argparse.Action, value: object
) -> object:
    """A configuration-file value as the option would have parsed it."""
    if action.nargs == 0:  # a flag: true sets it; false leaves the default
        if not isinstance(value, bool):
            raise ValueError("must be true or false (a flag)")
        return action.const if value else action.default
    many = isinstance(action, argparse._AppendAction) or action.nargs not in (None, "?")
    if many:
        values = value if isinstance(value, list) else [value]
        converted = [_scalar(action, v) for v in values]
        if isinstance(action.nargs, int) and len(converted) != action.nargs:
            raise ValueError(f"must be a list of {action.nargs} values")
        return converted
    if isinstance(value, list):
        raise ValueError("must be a single value, not a list")
    return _scalar(action, value)


def _scalar(action: argparse.Action, value: object) -> object:
    if isinstance(value, (bool, dict, list)):
        raise ValueError("must be a value (a number or a string)")
    converted: object = action.type(str(value)) if callable(action.type) else str(value)
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}")
    return converted


def read_config_file(argv: list[str]) -> ConfigFile | None:
    """The configuration file named by ``--config`` in ``argv``, read and checked, or None."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    return None if known.config is None else load_config_file(known.config)


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr: one line per query at INFO (default); patient data only at DEBUG.

    With ``-lc FILE`` the file sets up logging instead (:func:`load_log_config`, which raises
    :class:`LogConfigError`); the safeguards below apply to what it sets up too: every
    handler gets the filters of :func:`wlmserver.logs.install`, and pydicom and pynetdicom
    log below WARNING only when wlmserver's own logger is at DEBUG (patient data).
    """
    log_config = getattr(args, "log_config", None)
    quiet_loggers = {  # their levels unless wlmserver logs at DEBUG
        "pydicom": logging.ERROR,
        "py.warnings": logging.ERROR,
        "pynetdicom": logging.WARNING,
    }
    if log_config is not None:  # wlmscpfs parity: -lc
        for name in quiet_loggers:  # so that a level found on them after is the file's
            logging.getLogger(name).setLevel(logging.NOTSET)
        load_log_config(log_config)
        level = logging.getLogger("wlmserver").getEffectiveLevel()
    elif args.log_level:
        level = LOG_LEVELS[args.log_level]
    elif args.debug:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    else:
        level = logging.INFO
    if log_config is None:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    for handler in _every_handler():  # one line per record, and no flood
        logs.install(handler)
        if args.log_json:
            handler.setFormatter(logs.JsonFormatter())
    # pydicom warns with the offending value ("Invalid value for VR PN: '...'"), through its
    # logger and the warnings module: patient data, so only shown at debug level.
    # pynetdicom logs every PDU at INFO and dumps identifiers at DEBUG: only with -d.
    # A -lc file may make them quieter still, never louder.
    logging.captureWarnings(True)
    for name, quiet in quiet_loggers.items():
        logger = logging.getLogger(name)
        wanted = logging.DEBUG if level <= logging.DEBUG else quiet
        logger.setLevel(max(wanted, logger.level) if log_config is not None else wanted)


def archive_folder_problem(config: Config) -> str | None:
    """Why ``--archive-folder`` cannot be used as given, in one line, or None."""
    folder = config.archive_folder
    if folder is None:
        return None
    if config.retention_days is None:
        return (
            f"--archive-folder {folder} needs --retention-days N (which steps are past retention)"
        )
    problem = archive_problem(folder, config.data_files_path)
    if problem is not None:
        return (
            f"--archive-folder {folder}: {problem}; give a folder outside the AE folders "
            "(archived files would be served again)"
        )
    return None


def ready_line(config: Config) -> str:
    """The one line that says where the server serves from and how to query it."""
    root = config.data_files_path
    try:
        aets = sorted(p.name for p in root.iterdir() if p.is_dir() and is_safe_ae_title(p.name))
    except OSError:
        aets = []
    example = config.ae_title if config.ae_title in aets else (aets or ["<AETitle>"])[0]
    host = config.bind or "127.0.0.1"
    return (
        f"wlmserver {__version__} serving {root} (AE titles: {', '.join(aets) or 'none'}) "
        f"on port {{port}}; query it with: /usr/bin/findscu -W -aec {example} {host} {{port}} "
        '-k PatientName -k PatientID -k "(0040,0100)[0].Modality"'
    ) + _tls_ready_hint(config)


def main(argv: list[str] | None = None) -> int:
    """Run the ``wlmserver`` command; returns the exit status.

    ``wlmserver check ...`` runs a tool (see :data:`TOOLS`); anything else serves.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        import importlib

        return int(importlib.import_module(TOOLS[argv[0]]).main(argv[1:]))
    from wlmserver.service.server import run

    parser = build_parser()
    try:
        file = read_config_file(argv)
        if file is not None:
            apply_config_file(parser, file)
    except ConfigFileError as exc:
        parser.error(f"--config {exc}")
    args, extra = parser.parse_known_args(argv)
    if args.arguments:  # wlmscpfs parity: --arguments
        expanded = expanded_arguments(parser, argv)
        print(
            f"calling '{parser.prog}' with {len(expanded)} arguments: "
            + " ".join(shlex.quote(word) for word in expanded),
            file=sys.stderr,
            flush=True,
        )
    if any(word.startswith(("-", "+")) for word in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a second positional: the server takes one, the port
        word = extra[0]
        hint = f"{word!r} is a second port" if word.isdigit() else positional_hint(word)
        parser.error(f"only one port can be given; {hint}")
    if not 4096 <= args.max_pdu <= 131072 and args.max_pdu != 0:
        parser.error("-pdu must be between 4096 and 131072")
    if args.any_aet is not None and not is_safe_ae_title(args.any_aet):
        parser.error(f"--any-aet {args.any_aet!r} is not a valid AE title folder name")
    check_wlmscpfs_parity_options(parser, args)
    config = config_from_args(args, file)
    root = config.data_files_path
    if not root.is_dir():
        parser.error(f"the database root {root} is not a folder")
    if holds_worklist_files(root) and not any(
        p.is_dir() and is_safe_ae_title(p.name) for p in root.iterdir()
    ):
        parser.error(
            f"-dfp {root} holds .wl files itself: it is an AE folder, not a database root; "
            f"use -dfp {shlex.quote(str(root.parent))} (it is then served as AE title "
            f"{root.name!r})"
        )
    problem = folder_problem(config.mpps_path, root)
    if problem is not None:
        parser.error(f"--mpps-folder {config.mpps_path}: {problem}; give a folder of its own")
    retention_problem = archive_folder_problem(config)
    if retention_problem is not None:
        parser.error(retention_problem)
    if args.mpps_forward_aet is not None and args.mpps_forward is None:
        parser.error("--mpps-forward-aet needs --mpps-forward AET@HOST:PORT (where to forward)")
    check_tls(parser, args, config)
    try:
        setup_logging(args)
    except LogConfigError as exc:
        parser.error(f"-lc {args.log_config}: {exc}")
    return run(config, ready_message=ready_line(config))
