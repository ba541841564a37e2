"""The server's configuration for the tools that must see what it sees (``check``, ``explain``).

Both read it through the server's own loader (:func:`wlmserver.config.loader.load`): the
``--config FILE`` the server runs with, and the server options a tool takes on its own command
line (:data:`SHARED`), which override the file as they do on the server's command line; a
database given to the tool is the server's ``-dfp``. So the database root, the MPPS folder,
the hidden statuses, retention, JSON drops, ``-dfr``, PN case and the modality profiles are
the server's, and a mistake in the file is reported as the server reports it
(:func:`wlmserver.config.loader.fail`).

Each tool says on stderr, in one line (:func:`sources_line`), which database and which MPPS
folder it read and where they come from, and says so plainly when it reads the bundled
example because neither a database nor a configuration naming one was given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wlmserver.config.file import ConfigFileError
from wlmserver.config.loader import Loaded, fail, load
from wlmserver.config.options import UsageError
from wlmserver.matching.mpps import PerformedSteps
from wlmserver.store.mpps import MppsStore

#: The server options a tool may take on its own command line: the tool's argument name
#: (``dest``) -> the server's option. A flag is passed when true, a value as given (the
#: server's parser checks it).
SHARED = {
    "pn_case_insensitive": "--pn-case-insensitive",
    "json_drops": "--json-drops",
    "disable_file_reject": "--disable-file-reject",
    "mpps_folder": "--mpps-folder",
    "hide_status": "--hide-status",
    "retention_days": "--retention-days",
    "archive_folder": "--archive-folder",
    "request_file_path": "--request-file-path",
}


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: the server's configuration file."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the server's configuration file (e.g. /etc/wlmserver/wlmserver.toml): its "
        "database, MPPS folder, hidden statuses, retention and profiles apply; options given "
        "here override it, as on the server's command line",
    )


def server_argv(args: argparse.Namespace, root: Path | None) -> list[str]:
    """The server's command line for a tool's arguments: ``--config``, ``-dfp root`` and
    the :data:`SHARED` options the tool was given."""
    argv: list[str] = []
    if getattr(args, "config", None) is not None:
        argv += ["--config", str(args.config)]
    if root is not None:
        argv += ["--data-files-path", str(root)]
    for dest, option in SHARED.items():
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        argv += [option] if value is True else [option, str(value)]
    return argv


def load_for_tool(
    parser: argparse.ArgumentParser, args: argparse.Namespace, root: Path | None
) -> Loaded:
    """The server's configuration for a tool's arguments (``root``: the database it was
    given, or None); a mistake exits as the server's command line does (status 2)."""
    try:
        return load(server_argv(args, root))
    except (ConfigFileError, UsageError) as exc:
        fail(parser, exc)


@dataclass(frozen=True)
class MppsState:
    """What a tool read of the server's MPPS folder.

    Attributes
    ----------
    steps : PerformedSteps
        The steps modalities reported (none when the folder cannot be read).
    describe : str
        How it stands, for :func:`sources_line`: ``3 instances``, ``absent (no MPPS received
        yet)``, or why it cannot be read and what that means.
    """

    steps: PerformedSteps
    describe: str


def read_mpps(folder: Path) -> MppsState:
    """The steps reported in the server's MPPS folder, read without changing anything (a
    temporary file of the running server's is left alone) and without log lines."""
    if not folder.exists():
        return MppsState(PerformedSteps(), "absent (no MPPS received yet)")
    store = MppsStore(folder)
    package_log = logging.getLogger("wlmserver")
    level = package_log.level
    package_log.setLevel(logging.ERROR)
    try:
        count = store.load(create=False, tidy=False)
    except OSError as exc:
        return MppsState(
            PerformedSteps(),
            f"cannot read it ({exc.strerror or exc}): the statuses modalities reported are "
            "NOT applied; run this as the server's user",
        )
    finally:
        package_log.setLevel(level)
    return MppsState(store.steps, f"{count} instances")


def sources_line(prog: str, loaded: Loaded, root_given: bool, mpps: MppsState) -> str:
    """The one line saying which database and which MPPS folder a tool read, and whence.

    Examples
    --------
    ``wlmserver check: database /var/lib/wlmserver/wlistdb (data-files-path of
    /etc/wlmserver/wlmserver.toml:8); MPPS folder /var/lib/wlmserver/mpps (mpps-folder of
    /etc/wlmserver/wlmserver.toml:16): 2 instances``
    """
    config, file = loaded.config, loaded.file

    def whence(dest: str, given: bool, default: str) -> str:
        option = loaded.from_file.get(dest)
        if given:
            return "given"
        if option is not None and file is not None:
            where = f"{file.path}:{option.line}" if option.line else str(file.path)
            return f"{option.name} of {where}"
        return default

    if root_given or "data_files_path" in loaded.from_file:
        database = f"{config.data_files_path} ({whence('data_files_path', root_given, '')})"
    else:
        why = f"{file.path} names no data-files-path" if file is not None else "no --config"
        database = (
            f"{config.data_files_path}: the BUNDLED EXAMPLE, not a configured database (no "
            f"database given, {why}; its patients are fictional)"
        )
    given_mpps = loaded.args.mpps_folder is not None and "mpps_folder" not in loaded.from_file
    mpps_from = whence("mpps_folder", given_mpps, "the default, ROOT/.mpps")
    return f"{prog}: database {database}; MPPS folder {config.mpps_path} ({mpps_from}): " + (
        mpps.describe
    )


def hidden_statuses(statuses: Iterable[str]) -> str:
    """``COMPLETED,DISCONTINUED``, or ``none``."""
    return ",".join(sorted(statuses)) or "none"
