"""The ``wlmserver`` command: load the configuration (:mod:`wlmserver.config.loader`), set up
logging, and forward to :func:`wlmserver.service.server.run`; ``wlmserver <tool>`` runs a tool."""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import logging.config
import shlex
import sys
from pathlib import Path

from wlmserver import __version__, logs
from wlmserver.config import Config
from wlmserver.config.file import ConfigFileError
from wlmserver.config.loader import fail, load
from wlmserver.config.options import LOG_LEVELS, TOOLS, UsageError
from wlmserver.config.parity import expanded_arguments
from wlmserver.config.tlsoptions import tls_option_problem
from wlmserver.store.index import is_safe_ae_title


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


def check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace, config: Config) -> None:
    """Refuse TLS options that do not go together, and TLS files the server cannot use (one
    line naming the file), before the server starts."""
    from wlmserver.service.tls import TlsSetupError, server_context

    problem = tls_option_problem(args)
    if problem is not None:
        parser.error(problem)
    if args.tls is None:
        return
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


#: findscu's own calling AE title, and wlmserver query's (which the example configuration admits).
_FINDSCU, _QUERY = "FINDSCU", "WLMQUERY"


def ready_calling_aet(config: Config, called: str, host: str) -> str | None:
    """The calling AE title the ready line's findscu should give (``-aet``) so that the
    allow-lists admit it; None when findscu's own, FINDSCU, is admitted (or none is).

    ``wlmserver query``'s WLMQUERY first, then the titles the lists name without a wildcard
    (those of no modality profile first: a profile would narrow the answers), then a title
    made from a pattern (``CT0?`` gives ``CT00``).

    Examples
    --------
    >>> from pathlib import Path
    >>> from wlmserver.config.access import Access, AllowList
    >>> access = Access(AllowList(calling_ae_titles=("CT0?", "MR01")))
    >>> ready_calling_aet(Config(Path("/db"), access=access), "WLM", "127.0.0.1")
    'MR01'
    """
    access = config.access

    def admitted(title: str) -> bool:
        return access.refusal(title, called, host) is None

    if admitted(_FINDSCU):
        return None
    lists = [access.everyone, access.called.get(called)]
    patterns = [p.strip() for a in lists if a and a.calling_ae_titles for p in a.calling_ae_titles]
    literal = [p for p in patterns if not any(c in p for c in "*?")]
    neutral = [t for t in literal if config.profiles.for_calling(t).is_neutral]
    made = [p.replace("*", "").replace("?", "0") or "A" for p in patterns]
    for title in [_QUERY, *neutral, *literal, *made]:
        if admitted(title):
            return title
    return None


def ready_line(config: Config) -> str:
    """The one line that says where the server serves from and how to query it: a findscu
    command that works with the configuration (a calling AE title the allow-lists admit)."""
    root = config.data_files_path
    try:
        aets = sorted(p.name for p in root.iterdir() if p.is_dir() and is_safe_ae_title(p.name))
    except OSError:
        aets = []
    example = config.ae_title if config.ae_title in aets else (aets or ["<AETitle>"])[0]
    host = config.bind or "127.0.0.1"
    calling = ready_calling_aet(config, example, host)
    aet = f"-aet {calling} " if calling else ""
    return (
        f"wlmserver {__version__} serving {root} (AE titles: {', '.join(aets) or 'none'}) "
        f"on port {{port}}; query it with: /usr/bin/findscu -W {aet}-aec {example} {host} "
        '{port} -k PatientName -k PatientID -k "(0040,0100)[0].Modality"'
    ) + _tls_ready_hint(config)


def main(argv: list[str] | None = None) -> int:
    """Run the ``wlmserver`` command; returns the exit status.

    ``wlmserver check ...`` runs a tool (see :data:`TOOLS`); anything else serves.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        import importlib

        return int(importlib.import_module(TOOLS[argv[0]]).main(argv[1:]))
    from wlmserver.config.options import build_parser
    from wlmserver.service.server import run

    parser = build_parser()
    if "--arguments" in argv:  # wlmscpfs parity: printed before anything is checked
        expanded = expanded_arguments(parser, argv)
        print(
            f"calling '{parser.prog}' with {len(expanded)} arguments: "
            + " ".join(shlex.quote(word) for word in expanded),
            file=sys.stderr,
            flush=True,
        )
    try:
        loaded = load(argv, parser)
        args, config = loaded.args, loaded.config
        check_tls(parser, args, config)
        try:
            setup_logging(args)
        except LogConfigError as exc:
            raise UsageError(f"-lc {args.log_config}: {exc}") from None
    except (ConfigFileError, UsageError) as exc:
        fail(parser, exc)
    return run(config, ready_message=ready_line(config), argv=argv, args=args)
