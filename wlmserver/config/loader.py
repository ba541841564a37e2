"""The server's configuration from a command line and its configuration file: the one loader.

The server (:mod:`wlmserver.cli`) and the tools that must see what it sees (``wlmserver check``
and ``explain`` with ``--config``) call :func:`load`, so that a database root, an MPPS folder, a
hidden status or a profile is read the same way everywhere.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wlmserver.config import Config, bundled_database
from wlmserver.config.access import Access, AllowList, parse_network
from wlmserver.config.cachedir import default_index_cache, is_inside
from wlmserver.config.file import ConfigFile
from wlmserver.config.file import load as load_config_file
from wlmserver.config.options import UsageError, build_parser, holds_worklist_files, positional_hint
from wlmserver.config.parity import check_wlmscpfs_parity_options
from wlmserver.config.profiles import Profiles
from wlmserver.config.tlsoptions import tls_settings
from wlmserver.matching.encoding import DEFAULT_DEFLATE_LEVEL
from wlmserver.matching.stepstatus import DEFAULT_HIDDEN
from wlmserver.store.index import is_safe_ae_title
from wlmserver.store.mpps import folder_problem
from wlmserver.store.retention import archive_problem


def config_from_args(args: argparse.Namespace, file: ConfigFile | None = None) -> Config:
    """Turn parsed arguments (and the configuration file's tables) into the server's
    configuration."""
    titles = tuple(args.allow_calling_aet) if args.allow_calling_aet is not None else None
    hosts = (
        tuple(parse_network(h) for h in args.allow_host) if args.allow_host is not None else None
    )
    access = Access(
        AllowList(titles, hosts),
        file.access.called if file is not None else Access().called,
        file.access.certificates if file is not None else Access().certificates,
    )
    root = (args.data_files_path or bundled_database()).resolve()
    return Config(
        data_files_path=root,
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
        max_pending_connections=args.max_pending_connections,
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
        index_cache=_index_cache(args, root),
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


def _index_cache(args: argparse.Namespace, root: Path) -> Path | None:
    """The index cache folder: none with ``--no-index-cache`` (which wins over an
    ``index-cache`` of the configuration file), ``--index-cache``, else the user's or the
    service's cache folder (:func:`~wlmserver.config.cachedir.default_index_cache`)."""
    if args.no_index_cache:
        return None
    if args.index_cache is not None:
        return Path(args.index_cache)
    return default_index_cache(root)


def certificates_problem(config: Config) -> str | None:
    """Why ``[access.certificates]`` cannot work with this configuration, or None: it needs
    TLS with client certificates verified (``+tls`` with ``+cf``/``+cd``, not ``-ic``), or
    every bound calling AE title would be refused."""
    if config.access.certificates.is_empty:
        return None
    if not config.tls_enabled or config.tls_peer_cert_mode == "ignore":
        return (
            "needs TLS with client certificates verified: enable-tls (+tls KEY CERT) with "
            "add-cert-file or add-cert-dir (+cf, +cd), and not ignore-peer-cert (-ic)"
        )
    return None


@dataclass(frozen=True)
class Loaded:
    """What :func:`load` read.

    Attributes
    ----------
    config : Config
        The server's configuration.
    args : argparse.Namespace
        The parsed options (for what is not in :class:`Config`: logging, TLS checks).
    file : ConfigFile or None
        The configuration file read (``--config``), if any.
    parser : argparse.ArgumentParser
        The parser, for usage messages.
    """

    config: Config
    args: argparse.Namespace
    file: ConfigFile | None
    parser: argparse.ArgumentParser


def load(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> Loaded:
    """The server's configuration from a command line (and the ``--config`` file it names),
    checked as the server checks it before it starts (but for TLS files and logging, which
    :mod:`wlmserver.cli` checks).

    Raises
    ------
    ConfigFileError
        The configuration file cannot be used (it names the file, line and key).
    UsageError
        An option, or a combination of them, the server cannot run with.
    """
    argv = list(argv)
    parser = parser or build_parser()
    file = read_config_file(argv)
    if file is not None:
        apply_config_file(parser, file)
    args, extra = parser.parse_known_args(argv)
    if any(word.startswith(("-", "+")) for word in extra):
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a second positional: the server takes one, the port
        word = extra[0]
        hint = f"{word!r} is a second port" if word.isdigit() else positional_hint(word)
        raise UsageError(f"only one port can be given; {hint}")
    if not 4096 <= args.max_pdu <= 131072 and args.max_pdu != 0:
        raise UsageError("-pdu must be between 4096 and 131072")
    if args.any_aet is not None and not is_safe_ae_title(args.any_aet):
        raise UsageError(f"--any-aet {args.any_aet!r} is not a valid AE title folder name")
    check_wlmscpfs_parity_options(parser, args)
    config = config_from_args(args, file)
    root = config.data_files_path
    if not root.is_dir():
        raise UsageError(f"the database root {root} is not a folder")
    if holds_worklist_files(root) and not any(
        p.is_dir() and is_safe_ae_title(p.name) for p in root.iterdir()
    ):
        raise UsageError(
            f"-dfp {root} holds .wl files itself: it is an AE folder, not a database root; "
            f"use -dfp {shlex.quote(str(root.parent))} (it is then served as AE title "
            f"{root.name!r})"
        )
    if config.index_cache is not None and is_inside(config.index_cache, root):
        raise UsageError(
            f"--index-cache {config.index_cache} is inside the database root {root}: the cache "
            "holds patient data; give a folder outside it (default: the user's cache folder)"
        )
    problem = folder_problem(config.mpps_path, root)
    if problem is not None:
        raise UsageError(f"--mpps-folder {config.mpps_path}: {problem}; give a folder of its own")
    retention_problem = archive_folder_problem(config)
    if retention_problem is not None:
        raise UsageError(retention_problem)
    if args.mpps_forward_aet is not None and args.mpps_forward is None:
        raise UsageError("--mpps-forward-aet needs --mpps-forward AET@HOST:PORT (where to forward)")
    bindings_problem = certificates_problem(config)
    if bindings_problem is not None and file is not None:
        raise file.error("access.certificates", bindings_problem)
    return Loaded(config, args, file, parser)
