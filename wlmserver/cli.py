"""The ``wlmserver`` command: parse options (wlmscpfs's names where the idea is the same),
set up logging, and forward to :func:`wlmserver.service.server.run`."""

from __future__ import annotations

import argparse
import difflib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from wlmserver import __version__, logs
from wlmserver.config import DEFAULT_AE_TITLE, DEFAULT_PORT, Config, bundled_database
from wlmserver.matching.answers import CharsetPolicy
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE
from wlmserver.store.index import is_safe_ae_title

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


#: ``wlmserver <tool> ...``: the tools beside the server, by name -> module with ``main(argv)``.
TOOLS = {
    "check": "wlmserver.tools.check",
    "create": "wlmserver.tools.create",
    "explain": "wlmserver.tools.explain",
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
        epilog="tools: wlmserver create | check | query | explain (each with --help)",
        allow_abbrev=False,
        prefix_chars="-+",  # DCMTK's +option names (+tls, +cf ...)
    )
    p.add_argument(
        "port",
        nargs="?",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free port)",
    )
    p.add_argument("--version", action="version", version=f"wlmserver {__version__}")
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
    add_tls_options(p)
    return p


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


def config_from_args(args: argparse.Namespace) -> Config:
    """Turn parsed arguments into the server's configuration."""
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
        **tls_settings(args),
    )


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr: one line per query at INFO (default); patient data only at DEBUG."""
    if args.log_level:
        level = LOG_LEVELS[args.log_level]
    elif args.debug:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    else:
        level = logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:  # one line per record, and no flood
        logs.install(handler)
        if args.log_json:
            handler.setFormatter(logs.JsonFormatter())
    # pydicom warns with the offending value ("Invalid value for VR PN: '...'"), through its
    # logger and the warnings module: patient data, so only shown at debug level.
    logging.captureWarnings(True)
    for name in ("pydicom", "py.warnings"):
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.ERROR)
    # pynetdicom logs every PDU at INFO and dumps identifiers at DEBUG: only with -d.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    )


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
    args, extra = parser.parse_known_args(argv)
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
    config = config_from_args(args)
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
    check_tls(parser, args, config)
    setup_logging(args)
    return run(config, ready_message=ready_line(config))
