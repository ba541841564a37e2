"""The server's command-line options: one argument parser, wlmscpfs's option names where the
idea is the same.

The parser lives here, below the command line and the tools, because everything that reads the
server's configuration reads it through this parser (the configuration file's ``[server]``
keys are its long option names): the server itself (:mod:`wlmserver.cli`) and the tools that
must see what the server sees (``wlmserver check``, ``explain``), via
:func:`wlmserver.config.loader.load`.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import shlex
from pathlib import Path
from typing import NoReturn

from wlmserver.config import (
    DEFAULT_AE_TITLE,
    DEFAULT_MAX_CAPTURE_FILES,
    DEFAULT_MAX_CAPTURE_SIZE,
    DEFAULT_PORT,
)
from wlmserver.config.access import parse_network, valid_ae_pattern
from wlmserver.config.forward import DEFAULT_TIMEOUT as DEFAULT_FORWARD_TIMEOUT
from wlmserver.config.forward import ForwardTarget, valid_ae_title
from wlmserver.config.parity import add_wlmscpfs_parity_options
from wlmserver.config.tlsoptions import add_tls_options
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.matching.stepstatus import parse_statuses
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE
from wlmserver.store.forward import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES
from wlmserver.store.mpps import (
    DEFAULT_MAX_FOLDER,
    DEFAULT_MAX_INSTANCE,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_REQUEST,
)
from wlmserver.version import __version__

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


def _folder_mebibytes(text: str) -> int:
    """A folder's size in MiB (a positive number, up to 1 TiB) as bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if not 0 < value <= 1024 * 1024:
        raise argparse.ArgumentTypeError(f"{text} MiB: give a size from 0 to 1048576 MiB")
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


class UsageError(Exception):
    """A command line (or configuration) the server cannot run with; the message says what
    to type instead. :func:`wlmserver.cli.main` prints it after the usage line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of exiting (so the tools can
    load the server's configuration and report its problems their own way), and whose port
    messages stand alone (they say what to type)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message.removeprefix("argument port: "))


def add_mpps_limit_options(g: argparse._ActionsContainer) -> None:
    """The bounds of the MPPS store and of its forwarding queue, and MPPS retention; each
    limit reached refuses the request with 0x0213 Resource limitation (see
    :class:`~wlmserver.store.mpps.MppsLimits`, :class:`~wlmserver.store.forward.QueueLimits`)."""
    mib = 1024 * 1024
    g.add_argument(
        "--max-mpps-size",
        type=_positive,
        default=DEFAULT_MAX_REQUEST,
        metavar="BYTES",
        help="refuse an N-CREATE or N-SET data set longer than BYTES (status 0x0213; default "
        f"{DEFAULT_MAX_REQUEST}: a final N-SET listing every image of a 9,000-image study)",
    )
    g.add_argument(
        "--max-mpps-instance-size",
        type=_positive,
        default=DEFAULT_MAX_INSTANCE,
        metavar="BYTES",
        help="refuse an N-CREATE or N-SET that makes an MPPS instance longer than BYTES "
        f"(status 0x0213; default {DEFAULT_MAX_INSTANCE})",
    )
    g.add_argument(
        "--max-mpps-instances",
        type=_positive,
        default=DEFAULT_MAX_INSTANCES,
        metavar="N",
        help="refuse an N-CREATE once the MPPS folder holds N instances (status 0x0213; "
        f"default {DEFAULT_MAX_INSTANCES}; N-SETs of instances held are still accepted)",
    )
    g.add_argument(
        "--max-mpps-folder-size",
        type=_folder_mebibytes,
        default=DEFAULT_MAX_FOLDER,
        metavar="MIB",
        help="refuse an N-CREATE once the MPPS instances take MIB mebibytes (status 0x0213; "
        f"default {DEFAULT_MAX_FOLDER // mib})",
    )
    g.add_argument(
        "--max-forward-messages",
        type=_positive,
        default=DEFAULT_MAX_MESSAGES,
        metavar="N",
        help="with --mpps-forward: refuse N-CREATE and N-SET once N messages wait for the RIS "
        f"(status 0x0213; default {DEFAULT_MAX_MESSAGES})",
    )
    g.add_argument(
        "--max-forward-size",
        type=_folder_mebibytes,
        default=DEFAULT_MAX_BYTES,
        metavar="MIB",
        help="with --mpps-forward: refuse N-CREATE and N-SET once the messages waiting take "
        f"MIB mebibytes (status 0x0213; default {DEFAULT_MAX_BYTES // mib})",
    )
    g.add_argument(
        "--mpps-retention-days",
        type=_positive,
        metavar="N",
        help="move finished MPPS instances (COMPLETED, DISCONTINUED) that ended more than N "
        "days ago to MPPS folder/archive/, never deleted (default: --retention-days; needs it, "
        "at most N)",
    )


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
        metavar="PATH",
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
        "file is checked before its cached entries are used; patient data: DIR is made 0700; "
        "default: a folder per database root in $CACHE_DIRECTORY (systemd), else "
        "$XDG_CACHE_HOME/wlmserver, else ~/.cache/wlmserver)",
    )
    g.add_argument(
        "--no-index-cache",
        action="store_true",
        help="keep no index cache: every start indexes the whole database",
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
    add_mpps_limit_options(g)
    g.add_argument(
        "--mpps-forward-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="seconds the --mpps-forward SCP has to accept an association and to answer each "
        f"message (default {DEFAULT_FORWARD_TIMEOUT:g}); a message it did not answer in time "
        "is sent again later, its answer then awaited longer",
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
    g.add_argument(
        "--max-capture-files",
        type=_positive,
        default=DEFAULT_MAX_CAPTURE_FILES,
        metavar="N",
        help="with -rfp: capture no more requests once DIR holds N files (the query is answered "
        f"as always; one warning; default {DEFAULT_MAX_CAPTURE_FILES})",
    )
    g.add_argument(
        "--max-capture-size",
        type=_folder_mebibytes,
        default=DEFAULT_MAX_CAPTURE_SIZE,
        metavar="MIB",
        help="with -rfp: capture no more requests once DIR holds MIB mebibytes (default "
        f"{DEFAULT_MAX_CAPTURE_SIZE // 1048576})",
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
        metavar="N",
        help="parallel associations at most (default 50)",
    )
    g.add_argument(
        "--max-associations-per-peer",
        type=_positive,
        default=10,
        metavar="N",
        help="parallel associations of one peer host (an IPv6 /64 is one host) at most, and "
        "its connections still waiting for their association request (default 10)",
    )
    g.add_argument(
        "--max-pending-connections",
        type=_positive,
        default=50,
        metavar="N",
        help="connections still waiting for their association request at most, from all "
        "hosts; one more is closed at once (default 50)",
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
