"""The server's configuration from a command line and its configuration file: the one loader.

The server (:mod:`wlmserver.cli`) and the tools that must see what it sees (``wlmserver check``
and ``explain`` with ``--config``) call :func:`load`, so that a database root, an MPPS folder, a
hidden status or a profile is read the same way everywhere.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from wlmserver.config import Config, bundled_database
from wlmserver.config.access import Access, AllowList, parse_network
from wlmserver.config.cachedir import default_index_cache, is_inside
from wlmserver.config.file import ConfigFile, ConfigFileError, ServerOption
from wlmserver.config.file import load as load_config_file
from wlmserver.config.forward import DEFAULT_TIMEOUT as DEFAULT_FORWARD_TIMEOUT
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
        mpps_forward_timeout=(
            DEFAULT_FORWARD_TIMEOUT
            if args.mpps_forward_timeout is None
            else args.mpps_forward_timeout
        ),
        max_mpps_size=args.max_mpps_size,
        max_mpps_instance_size=args.max_mpps_instance_size,
        max_mpps_instances=args.max_mpps_instances,
        max_mpps_folder_size=args.max_mpps_folder_size,
        max_forward_messages=args.max_forward_messages,
        max_forward_size=args.max_forward_size,
        max_capture_files=args.max_capture_files,
        max_capture_size=args.max_capture_size,
        mpps_retention_days=args.mpps_retention_days,
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


def apply_config_file(parser: argparse.ArgumentParser, file: ConfigFile) -> dict[str, ServerOption]:
    """Make the file's ``[server]`` keys (command-line long option names) and its global
    ``[access]`` lists the parser's defaults, so that the command line overrides them.

    A relative folder or file path is relative to the configuration file's folder.

    Returns
    -------
    dict of str to ServerOption
        The ``[server]`` key behind each option's default, by the option's ``dest``.

    Raises
    ------
    ConfigFileError
        Every key that is not an option, or whose value the option does not take, each
        naming its line; with the mistakes the file was read with (``file.problems``).
    """
    behind, errors = _apply(parser, file)
    if errors:
        raise ConfigFileError.every(errors)
    return behind


def _apply(
    parser: argparse.ArgumentParser, file: ConfigFile
) -> tuple[dict[str, ServerOption], list[ConfigFileError]]:
    """:func:`apply_config_file`, the keys that can be applied applied; with the mistakes
    (the file's own first)."""
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
    behind: dict[str, ServerOption] = {}
    errors = list(file.problems)
    for option in file.server:
        key = option.name.replace("_", "-")
        action = actions.get(key)
        dotted = f"server.{option.name}"
        if action is None:
            close = difflib.get_close_matches(key, actions, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            errors.append(
                file.error(
                    dotted, f"not a command-line option; {hint}(see wlmserver --help: long names)"
                )
            )
            continue
        try:
            value = _option_value(parser, action, option.value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            errors.append(file.error(dotted, str(exc) or "invalid value"))
            continue
        defaults[action.dest] = _beside(file.path, value)
        behind[action.dest] = option
    allow = file.access.everyone  # [access] and [server] lists add up
    if allow.calling_ae_titles is not None:
        before = defaults.get("allow_calling_aet") or []
        defaults["allow_calling_aet"] = [*before, *allow.calling_ae_titles]  # type: ignore[misc]
    if allow.hosts is not None:
        before = defaults.get("allow_host") or []
        defaults["allow_host"] = [*before, *(str(h) for h in allow.hosts)]  # type: ignore[misc]
    parser.set_defaults(**defaults)
    return behind, errors


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
    """The configuration file named by ``--config`` in ``argv``, or None; read, its mistakes
    in ``problems`` (:func:`apply_config_file` raises them with those of its ``[server]``
    keys).

    Raises
    ------
    ConfigFileError
        It cannot be read, or is not TOML.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    return None if known.config is None else load_config_file(known.config, strict=False)


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
    from_file : Mapping of str to ServerOption
        The options whose value is the configuration file's (not overridden on the command
        line), by ``dest``: the ``[server]`` key and its line.
    """

    config: Config
    args: argparse.Namespace
    file: ConfigFile | None
    parser: argparse.ArgumentParser
    from_file: Mapping[str, ServerOption] = field(default_factory=dict)


def _given(argv: Sequence[str]) -> set[str]:
    """The options (by ``dest``) that ``argv`` gives itself, rather than a file's defaults."""
    parser = build_parser()
    for action in parser._actions:  # a positional's default is converted: None, not SUPPRESS
        action.default = argparse.SUPPRESS if action.option_strings else None
    namespace, _ = parser.parse_known_args(list(argv))
    return {dest for dest, value in vars(namespace).items() if value is not None}


def load(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> Loaded:
    """The server's configuration from a command line (and the ``--config`` file it names),
    checked as the server checks it before it starts (but for TLS files and logging, which
    :mod:`wlmserver.cli` checks).

    Raises
    ------
    ConfigFileError
        The configuration file cannot be used: every mistake in it, each naming the file,
        line and key; a value of the file's that the checks after parsing refuse (a database
        root that is not a folder ...) names its key too.
    UsageError
        An option, or a combination of them, the server cannot run with.
    """
    argv = list(argv)
    parser = parser or build_parser()
    file = read_config_file(argv)
    behind, mistakes = _apply(parser, file) if file is not None else ({}, [])
    try:
        return _checked(argv, parser, file, behind, mistakes)
    except UsageError:
        if mistakes:  # what the file's mistakes left out may be why: say those
            raise ConfigFileError.every(mistakes) from None
        raise


def _checked(
    argv: list[str],
    parser: argparse.ArgumentParser,
    file: ConfigFile | None,
    behind: dict[str, ServerOption],
    mistakes: list[ConfigFileError],
) -> Loaded:
    """:func:`load`, once the file's keys are the parser's defaults (``mistakes``: those
    that could not be, raised with what the checks after parsing find in the file)."""
    args, extra = parser.parse_known_args(argv)
    if any(word.startswith(("-", "+")) for word in extra):
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a second positional: the server takes one, the port
        word = extra[0]
        hint = f"{word!r} is a second port" if word.isdigit() else positional_hint(word)
        raise UsageError(f"only one port can be given; {hint}")
    given = _given(argv) if behind else set()
    from_file = {dest: option for dest, option in behind.items() if dest not in given}
    refusals = _Refusals(file, from_file, mistakes)
    if not 4096 <= args.max_pdu <= 131072 and args.max_pdu != 0:
        refusals.add("max_pdu", "-pdu must be between 4096 and 131072")
    if args.any_aet is not None and not is_safe_ae_title(args.any_aet):
        refusals.add("any_aet", f"--any-aet {args.any_aet!r} is not a valid AE title folder name")
    check_wlmscpfs_parity_options(parser, args)
    config = config_from_args(args, file)
    root = config.data_files_path
    in_file = "data_files_path" in from_file
    if not root.is_dir():
        refusals.add("data_files_path", f"the database root {root} is not a folder")
    elif holds_worklist_files(root) and not any(
        p.is_dir() and is_safe_ae_title(p.name) for p in root.iterdir()
    ):
        parent = shlex.quote(str(root.parent))
        refusals.add(
            "data_files_path",
            f"{'' if in_file else '-dfp '}{root} holds .wl files itself: it is an AE folder, "
            "not a database root; use "
            + (f'data-files-path = "{root.parent}"' if in_file else f"-dfp {parent}")
            + f" (it is then served as AE title {root.name!r})",
        )
    if config.index_cache is not None and is_inside(config.index_cache, root):
        refusals.add(
            "index_cache",
            f"--index-cache {config.index_cache} is inside the database root {root}: the cache "
            "holds patient data; give a folder outside it (default: the user's cache folder)",
        )
    problem = folder_problem(config.mpps_path, root)
    if problem is not None:
        refusals.add(
            "mpps_folder", f"--mpps-folder {config.mpps_path}: {problem}; give a folder of its own"
        )
    retention_problem = archive_folder_problem(config)
    if retention_problem is not None:
        refusals.add("archive_folder", retention_problem)
    if config.mpps_retention_days is not None and (
        config.retention_days is None or config.mpps_retention_days < config.retention_days
    ):
        refusals.add(
            "mpps_retention_days",
            f"--mpps-retention-days {config.mpps_retention_days} needs --retention-days N with "
            f"N at most {config.mpps_retention_days}: a step whose MPPS is archived while it is "
            "still served would be answered again with its file's status",
        )
    for option in ("aet", "timeout"):
        if getattr(args, f"mpps_forward_{option}") is not None and args.mpps_forward is None:
            refusals.add(
                f"mpps_forward_{option}",
                f"--mpps-forward-{option} needs --mpps-forward AET@HOST:PORT (where to forward)",
            )
    bindings_problem = certificates_problem(config)
    if bindings_problem is not None and file is not None:
        refusals.in_file.append(file.error("access.certificates", bindings_problem))
    refusals.raise_them()
    return Loaded(config, args, file, parser, from_file)


class _Refusals:
    """What the checks after parsing refuse: a value of the configuration file's is a
    mistake of the file (at its key's line), one of the command line's a usage error."""

    def __init__(
        self,
        file: ConfigFile | None,
        from_file: Mapping[str, ServerOption],
        mistakes: list[ConfigFileError],
    ) -> None:
        self.file, self.from_file = file, from_file
        self.in_file: list[ConfigFileError] = list(mistakes)
        self.usage: list[str] = []

    def add(self, dest: str, message: str) -> None:
        option = self.from_file.get(dest)
        if option is None or self.file is None:
            self.usage.append(message)
        else:
            self.in_file.append(self.file.error(f"server.{option.name}", message))

    def raise_them(self) -> None:
        """Raise the file's mistakes (all of them), else the command line's first."""
        if self.in_file:
            raise ConfigFileError.every(self.in_file)
        if self.usage:
            raise UsageError(self.usage[0])


def fail(parser: argparse.ArgumentParser, error: ConfigFileError | UsageError) -> NoReturn:
    """Exit with status 2, as a command line that cannot run: a usage error after the usage
    text; the configuration file's mistakes one line each (``PROG: error: --config
    FILE:LINE: KEY: PROBLEM``), without the usage text (the command line was right)."""
    if isinstance(error, UsageError):
        argparse.ArgumentParser.error(parser, str(error))
    for each in error.errors:
        print(f"{parser.prog}: error: --config {each}", file=sys.stderr)
    raise SystemExit(2)
