"""Reload on SIGHUP: the configuration read again, and what can change while serving applied.

``systemctl reload`` (SIGHUP) re-reads the command line the server started with, and the
configuration file it names, through the one loader (:func:`wlmserver.config.loader.load`),
then:

- a configuration that does not load (a file error, an option the server cannot run with, a
  TLS file that does not load) is refused whole: the one in use stays, and one ERROR line
  says why (``file:line: key: problem``);
- settings that can change while serving (:data:`LIVE`: allow-lists and certificate
  bindings, modality profiles, limits, timeouts, hidden statuses, retention, query options,
  TLS certificates and trusted CAs) apply to every association from then on, and one INFO
  line names them (setting names only, never patient data);
- settings that cannot (:data:`RESTART`: port, bind address, database root, MPPS folder,
  index cache, workers, turning TLS on or off...) keep their old value, and one WARNING line
  names them ("need a restart");
- the TLS key, certificate and trusted certificates are read again even when their paths
  are the same (certificates are renewed in place): new handshakes use the new context;
- the database is rescanned, as SIGHUP always did.

An association keeps the configuration it started with, for its whole life: each one is
pinned to the immutable :class:`~wlmserver.config.Config` snapshot current when its
connection opened (:class:`LiveConfig`), and every handler of that association reads that
one. A reload only swaps the reference new connections get, so a thread never sees half of
an old configuration and half of a new one, an association admitted under one allow-list is
not cut off by the next, and a modality's queries on one association all see one profile.
The server-wide association counts (``--max-associations``) apply the new limits from the
next association on; associations already admitted stay, even over a lower limit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wlmserver.config import Config
from wlmserver.config.file import ConfigFileError
from wlmserver.config.loader import certificates_problem, load
from wlmserver.config.options import UsageError
from wlmserver.config.tlsoptions import tls_option_problem
from wlmserver.service import tls
from wlmserver.service.admission import Admission
from wlmserver.service.handlers import FindResponse, handle_connection_open, handle_requested
from wlmserver.store.index import WorklistStore
from wlmserver.store.mpps import MppsStore

LOGGER = logging.getLogger(__name__)

#: The settings a reload applies: read per association or per query, or by an object the
#: server can hand a new value (the admission limits, the TLS listener's context).
LIVE = frozenset(
    {
        "access",
        "profiles",
        "max_associations",
        "max_associations_per_peer",
        "max_pending_connections",
        "max_identifier_size",
        "max_value_length",
        "max_answers",
        "acse_timeout",
        "dimse_timeout",
        "network_timeout",
        "hide_statuses",
        "retention_days",
        "expand_empty_sps",
        "charset_policy",
        "pn_case_insensitive",
        "fail_invalid_query",
        "any_aet_folder",
        "request_file_path",
        "request_file_format",
        "max_capture_files",
        "max_capture_size",
        "refuse_associations",
        "reject_without_implementation_uid",
        "compression_level",
        "tls_key",
        "tls_cert",
        "tls_ca_files",
        "tls_ca_dirs",
        "tls_peer_cert",
    }
)
#: The settings that need a restart: the listeners, the index and its watcher, the MPPS
#: store and its forwarder, the AE's presentation contexts and the pacing are built once.
RESTART = frozenset(
    {
        "data_files_path",
        "port",
        "bind",
        "ae_title",
        "reject_incomplete",
        "log_json",
        "max_pdu",
        "poll",
        "rescan_interval",
        "json_drops",
        "max_file_size",
        "follow_links",
        "index_cache",
        "index_workers",
        "mpps_folder",
        "archive_folder",
        "mpps_forward",
        "mpps_forward_aet",
        "mpps_forward_timeout",
        "max_mpps_size",
        "max_mpps_instance_size",
        "max_mpps_instances",
        "max_mpps_folder_size",
        "max_forward_messages",
        "max_forward_size",
        "mpps_retention_days",
        "config_file",
        "sleep_before_find",
        "sleep_during_find",
        "sleep_after_find",
        "transfer_syntax_preference",
        "tls_port",
    }
)
#: The TLS settings: applied while TLS stays on; turning it on or off needs a restart (the
#: listeners are made with or without TLS).
TLS_FIELDS = frozenset({"tls_key", "tls_cert", "tls_ca_files", "tls_ca_dirs", "tls_peer_cert"})
#: Logging options (not in :class:`Config`): logging is set up once, at start.
LOGGING_OPTIONS = ("quiet", "verbose", "debug", "log_level", "log_config")

#: Setting names in the log where they are not the field's name with dashes: the option's.
_NAMES = {
    "ae_title": "aetitle",
    "tls_key": "enable-tls",
    "tls_cert": "enable-tls",
    "tls_ca_files": "add-cert-file",
    "tls_ca_dirs": "add-cert-dir",
    "tls_peer_cert": "require/verify/ignore-peer-cert",
    "hide_statuses": "hide-status",
    "expand_empty_sps": "no-sq-expansion",
    "fail_invalid_query": "no-fail",
    "charset_policy": "-csk/-cs1",
    "any_aet_folder": "any-aet",
    "refuse_associations": "refuse",
    "reject_without_implementation_uid": "reject",
    "sleep_before_find": "sleep-before",
    "sleep_during_find": "sleep-during",
    "sleep_after_find": "sleep-after",
    "transfer_syntax_preference": "+x=/+xe/+xb/+xd/+xi",
    "reject_incomplete": "-efr/-dfr",
    "config_file": "config",
    "log_config": "log-config",
}

#: Where an association's configuration is pinned (its ``__dict__``).
_PIN = "_wlmserver_config"


def setting_name(field: str) -> str:
    """The name of a :class:`Config` field (or logging option) in the log: its option's.

    Examples
    --------
    >>> setting_name("max_answers"), setting_name("tls_cert")
    ('max-answers', 'enable-tls')
    """
    return _NAMES.get(field, field.replace("_", "-"))


class LiveConfig:
    """The configuration new associations get; each association keeps its own.

    The handlers of :class:`~wlmserver.service.server.WorklistServer` are bound through it:
    :meth:`connection_open` pins the current snapshot to the association, and every later
    handler of that association (:meth:`requested`, :meth:`find`) is given that one.

    Parameters
    ----------
    config : Config
        The configuration at start.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()

    @property
    def current(self) -> Config:
        """The snapshot new associations get."""
        return self._config

    def replace(self, config: Config) -> None:
        """Give ``config`` to the associations from now on (one reference swapped)."""
        with self._lock:
            self._config = config

    def of(self, assoc: Any) -> Config:
        """The configuration of an association: the one pinned when its connection opened
        (else the current one, pinned now)."""
        try:
            pinned = assoc.__dict__.setdefault(_PIN, self._config)
        except (AttributeError, TypeError):
            return self._config
        return pinned if isinstance(pinned, Config) else self._config

    def connection_open(self, event: Any, admission: Admission | None = None) -> None:
        """``EVT_CONN_OPEN``: pin the current configuration to the association, give it that
        configuration's timeouts (the AE's are those of the start; changing those would
        change every open association's), then
        :func:`~wlmserver.service.handlers.handle_connection_open`."""
        assoc = event.assoc
        config = self.of(assoc)
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            wanted = getattr(config, name)
            with contextlib.suppress(AttributeError):
                if getattr(assoc, name) != wanted:
                    setattr(assoc, name, wanted)
        handle_connection_open(event, config, admission)

    def requested(
        self, event: Any, store: WorklistStore, admission: Admission | None = None
    ) -> None:
        """``EVT_REQUESTED``: :func:`~wlmserver.service.handlers.handle_requested` with the
        association's configuration."""
        if admission is not None:
            admission.requested(event.assoc)  # it no longer counts as waiting
        handle_requested(event, store, self.of(event.assoc), admission)

    def find(
        self,
        event: Any,
        handler: Callable[..., Iterator[FindResponse]],
        store: WorklistStore,
        mpps: MppsStore | None = None,
    ) -> Iterator[FindResponse]:
        """``EVT_C_FIND``: ``handler`` (:func:`~wlmserver.service.handlers.handle_find`, or
        the pacing's) with the association's configuration."""
        return handler(event, store, self.of(event.assoc), mpps)


class ReloadError(Exception):
    """A configuration the reload refuses; the message is one line saying why."""


@dataclass(frozen=True)
class Plan:
    """What a reload does.

    Attributes
    ----------
    config : Config
        The configuration to serve from now on: the new one, but for the settings that
        need a restart, which keep their old values.
    changed : tuple of str
        The names of the settings it changes (:func:`setting_name`; the allow-lists and
        profiles by part: ``access.hosts``, ``profiles.ct``).
    needs_restart : tuple of str
        The names of the settings that changed but are not applied.
    """

    config: Config
    changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()


def _access_changes(old: Config, new: Config) -> list[str]:
    a, b = old.access, new.access
    parts = [
        ("access.calling-ae-titles", a.everyone.calling_ae_titles, b.everyone.calling_ae_titles),
        ("access.hosts", a.everyone.hosts, b.everyone.hosts),
        ("access.called", dict(a.called), dict(b.called)),
        ("access.certificates", a.certificates, b.certificates),
    ]
    return [name for name, before, after in parts if before != after]


def _profile_changes(old: Config, new: Config) -> list[str]:
    before = {p.name: p for p in old.profiles.profiles}
    after = {p.name: p for p in new.profiles.profiles}
    names = [
        f"profiles.{name}"
        for name in dict.fromkeys([*before, *after])
        if before.get(name) != after.get(name)
    ]
    return names or ["profiles (their order)"]


def plan(old: Config, new: Config) -> Plan:
    """What reloading ``new`` over ``old`` changes, and what needs a restart.

    Examples
    --------
    >>> from pathlib import Path
    >>> old = Config(Path("/db"), max_answers=0)
    >>> step = plan(old, Config(Path("/db"), max_answers=500, port=104))
    >>> step.changed, step.needs_restart, step.config.max_answers, step.config.port
    (('max-answers',), ('port',), 500, 11112)
    """
    tls_switched = old.tls_enabled != new.tls_enabled
    updates: dict[str, Any] = {}
    changed: list[str] = []
    restart: list[str] = []
    for field in dataclasses.fields(Config):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        if field.name in LIVE and not (tls_switched and field.name in TLS_FIELDS):
            updates[field.name] = after
            if field.name == "access":
                changed += _access_changes(old, new)
            elif field.name == "profiles":
                changed += _profile_changes(old, new)
            else:
                changed.append(setting_name(field.name))
        else:
            restart.append(setting_name(field.name))
    return Plan(
        dataclasses.replace(old, **updates),
        tuple(dict.fromkeys(changed)),
        tuple(dict.fromkeys(restart)),
    )


def tls_files(config: Config) -> list[Path]:
    """The TLS files a context is made of: key, certificate, trusted certificates (the
    files of ``+cd`` folders included)."""
    files = [p for p in (config.tls_key, config.tls_cert) if p is not None]
    files += list(config.tls_ca_files)
    for folder in config.tls_ca_dirs:
        with contextlib.suppress(OSError):
            files += sorted(p for p in folder.iterdir() if p.is_file())
    return files


def _digests(config: Config) -> dict[Path, str]:
    found = {}
    for path in tls_files(config):
        with contextlib.suppress(OSError):
            found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def prepare(
    argv: Sequence[str], current: Config, start_args: argparse.Namespace | None = None
) -> tuple[Plan, ssl.SSLContext | None]:
    """Load ``argv`` again and check it: the plan, and the TLS context to serve (made anew
    whenever TLS is on).

    Parameters
    ----------
    argv : sequence of str
        The server's command line.
    current : Config
        The configuration in use.
    start_args : argparse.Namespace or None
        The options parsed at start: logging options changed since are named as needing a
        restart.

    Raises
    ------
    ReloadError
        The new configuration is refused whole (the message says why, in one line).
    """
    try:
        loaded = load(argv)
    except (ConfigFileError, UsageError) as exc:
        raise ReloadError(str(exc)) from None
    problem = tls_option_problem(loaded.args)
    if problem is not None:
        raise ReloadError(problem)
    step = plan(current, loaded.config)
    problem = certificates_problem(step.config)
    if problem is not None:  # the new file's TLS is on, the server's is not (yet)
        problem += " (TLS is turned on or off at a restart only)"
        file = loaded.file
        raise ReloadError(str(file.error("access.certificates", problem)) if file else problem)
    if start_args is not None:
        logging_changed = [
            setting_name(name)
            for name in LOGGING_OPTIONS
            if getattr(start_args, name, None) != getattr(loaded.args, name, None)
        ]
        if logging_changed:
            step = dataclasses.replace(step, needs_restart=(*step.needs_restart, *logging_changed))
    context = None
    if step.config.tls_enabled:
        try:
            context = tls.server_context(step.config)
        except tls.TlsSetupError as exc:
            raise ReloadError(str(exc)) from None
    return step, context


class Reconfigurable(Protocol):
    """What a reload needs of the server (:class:`~wlmserver.service.server.WorklistServer`)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> WorklistStore: ...

    def reconfigure(self, config: Config, tls_context: ssl.SSLContext | None) -> None: ...


class Reloader:
    """SIGHUP for one running server: reload the configuration, then rescan the database.

    Parameters
    ----------
    server : Reconfigurable
        The running server.
    argv : sequence of str or None
        The command line it was started with; None: SIGHUP only rescans (a server started
        from Python, without a command line).
    start_args : argparse.Namespace or None
        The options parsed at start (see :func:`prepare`).
    """

    def __init__(
        self,
        server: Reconfigurable,
        argv: Sequence[str] | None,
        start_args: argparse.Namespace | None = None,
    ) -> None:
        self.server = server
        self.argv = None if argv is None else list(argv)
        self.start_args = start_args
        self._digests = _digests(server.config)

    def reload(self) -> Plan | None:
        """Reload the configuration; the plan applied, or None when it was refused (the
        configuration in use stays). Logs one line for what changed, one for what needs a
        restart, or one for why it was refused."""
        if self.argv is None:
            return None
        current = self.server.config
        try:
            step, context = prepare(self.argv, current, self.start_args)
        except ReloadError as exc:
            LOGGER.error("SIGHUP: configuration not reloaded, the one in use stays: %s", exc)
            return None
        if step.needs_restart:
            LOGGER.warning(
                "SIGHUP: %s changed but need a restart; not applied",
                ", ".join(step.needs_restart),
            )
        said = list(step.changed)
        digests = _digests(step.config) if context is not None else {}
        renewed = [p.name for p, d in digests.items() if self._digests.get(p) not in (None, d)]
        if renewed:
            said.append(f"TLS files {', '.join(renewed)}")
        self.server.reconfigure(step.config, context)
        self._digests = digests or self._digests
        reread = "; TLS files read again" if context is not None else ""
        LOGGER.info(
            "SIGHUP: configuration reloaded: %s%s",
            f"{', '.join(said)} changed" if said else "nothing changed",
            reread,
            extra={"fields": {"event": "reload", "changed": said}},
        )
        return step

    def hangup(self) -> None:
        """What SIGHUP does: reload the configuration, then rescan the database. A reload
        never stops the server: an unexpected error is logged, and serving goes on."""
        try:
            self.reload()
        except Exception:
            LOGGER.exception("SIGHUP: the reload failed; serving goes on")
        store = self.server.store
        LOGGER.info("SIGHUP: rescanning %s", store.root)
        corrected = store.verify()
        LOGGER.info("SIGHUP: rescan done, %d files were out of date", corrected)
