"""Reload on SIGHUP: what a new configuration changes, what needs a restart, what is refused,
and associations open meanwhile.

In-process servers are started from a command line (``--config FILE``) as the ``wlmserver``
command starts them, and reloaded with :class:`Reloader` as its SIGHUP handler does; the last
test sends the real signal to a ``wlmserver`` process. Waits are bounded polls on outcomes.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import documented, make_dataset, start_command, until, write_wl
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from tls_certs import Certs, make_certs

from wlmserver.config import Config
from wlmserver.config.access import Access, AllowList
from wlmserver.config.loader import load
from wlmserver.config.profiles import Profile, Profiles
from wlmserver.matching.status import Status
from wlmserver.service.reload import (
    LIVE,
    LOGGING_OPTIONS,
    RESTART,
    TLS_FIELDS,
    Reloader,
    plan,
    setting_name,
)
from wlmserver.service.server import MODALITY_WORKLIST_FIND, WorklistServer

PENDING, SUCCESS = int(Status.PENDING), int(Status.SUCCESS)
OUT_OF_RESOURCES = int(Status.OUT_OF_RESOURCES)
LOGGER = "wlmserver.service.reload"

# -- what a reload applies


def test_every_setting_is_reloaded_or_needs_a_restart() -> None:
    """A new Config field must be put in one of the two sets (or the reload would silently
    apply a setting the running server cannot change)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == LIVE | RESTART
    assert not LIVE & RESTART
    assert TLS_FIELDS <= LIVE


ROOT = Path("/db")


@pytest.mark.parametrize(
    ("old", "new", "changed", "needs_restart"),
    [
        (Config(ROOT), Config(ROOT), (), ()),
        (Config(ROOT), Config(ROOT, max_answers=5, port=104), ("max-answers",), ("port",)),
        (
            Config(ROOT),
            Config(ROOT, access=Access(AllowList(("CT01",)))),
            ("access.calling-ae-titles",),
            (),
        ),
        (
            Config(ROOT, profiles=Profiles((Profile("ct", ("CT*",)),))),
            Config(ROOT, profiles=Profiles((Profile("ct", ("CT*",), station_filter=True),))),
            ("profiles.ct",),
            (),
        ),
        (
            Config(ROOT, tls_key=Path("a.key"), tls_cert=Path("a.pem")),
            Config(ROOT, tls_key=Path("b.key"), tls_cert=Path("b.pem")),
            ("enable-tls",),
            (),
        ),
        # TLS turned on (or off) needs the listeners made again
        (
            Config(ROOT),
            Config(ROOT, tls_key=Path("a.key"), tls_cert=Path("a.pem"), hide_statuses=frozenset()),
            ("hide-status",),
            ("enable-tls",),
        ),
        (
            Config(ROOT),
            Config(Path("/elsewhere"), index_cache=Path("/cache"), retention_days=30),
            ("retention-days",),
            ("data-files-path", "index-cache"),
        ),
    ],
)
def test_a_plan_applies_live_settings_and_names_the_others(
    old: Config, new: Config, changed: tuple[str, ...], needs_restart: tuple[str, ...]
) -> None:
    step = plan(old, new)
    assert (step.changed, step.needs_restart) == (changed, needs_restart)
    switched = old.tls_enabled != new.tls_enabled
    for field in dataclasses.fields(Config):
        live = field.name in LIVE and not (switched and field.name in TLS_FIELDS)
        wanted = getattr(new if live else old, field.name)
        assert getattr(step.config, field.name) == wanted, field.name


# -- in-process servers started from a command line

Serve = Callable[..., tuple[WorklistServer, Reloader, Path]]


@pytest.fixture
def serve(db: Path, tmp_path: Path) -> Iterator[Serve]:
    """Start a server as ``wlmserver --config FILE -dfp db --bind 127.0.0.1 ... 0`` does
    (with ``text`` in FILE); its reloader; the file. Always stopped afterwards."""
    servers: list[WorklistServer] = []

    def start(text: str, *options: str) -> tuple[WorklistServer, Reloader, Path]:
        path = tmp_path / "wlmserver.toml"
        path.write_text(text, encoding="utf-8")
        argv = ["--config", str(path), "-dfp", str(db), "--bind", "127.0.0.1", *options, "0"]
        argv += ["--rescan-interval", "0"]
        loaded = load(argv)
        server = WorklistServer(loaded.config)
        server.start()
        servers.append(server)
        return server, Reloader(server, argv, loaded.args), path

    yield start
    for server in servers:
        server.stop()


def _associate(port: int, calling: str, context: ssl.SSLContext | None = None) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.dimse_timeout = 30
    tls_args = None if context is None else (context, "localhost")
    return ae.associate("127.0.0.1", port, ae_title="WLM", tls_args=tls_args)


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    item = Dataset()
    item.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [item]
    return query


def _statuses(assoc: Any) -> list[int]:
    statuses = []
    for status, _ in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND):
        assert status is not None, "no response (timeout or abort)"
        statuses.append(int(status.Status))
    return statuses


def _find(port: int, calling: str, context: ssl.SSLContext | None = None) -> list[int] | None:
    """One C-FIND over a new association; its statuses, or None if it was not accepted."""
    assoc = _associate(port, calling, context)
    if not assoc.is_established:
        return None
    try:
        return _statuses(assoc)
    finally:
        assoc.release()


def _reload_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.fixture
def two_steps(db: Path) -> Path:
    write_wl(db / "WLM" / "ct01.wl", make_dataset(PatientID="P1"))
    write_wl(
        db / "WLM" / "ct02.wl", make_dataset([{"ScheduledStationAETitle": "CT02"}], PatientID="P2")
    )
    return db


def test_a_title_added_is_accepted_and_an_open_association_keeps_its_configuration(
    serve: Serve, two_steps: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The allow-list goes from OLD to NEW: an association OLD opened before the reload
    completes its queries (under the configuration it started with, its DIMSE timeout
    included); new ones get the new lists and timeout."""
    caplog.set_level(logging.INFO, "wlmserver")
    server, reloader, path = serve('[access]\ncalling-ae-titles = ["OLD"]\n')
    held = _associate(server.port, "OLD")
    assert held.is_established
    try:
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]
        assert _find(server.port, "NEW") is None
        path.write_text(
            '[server]\ndimse-timeout = 45\n[access]\ncalling-ae-titles = ["NEW"]\n',
            encoding="utf-8",
        )
        step = reloader.reload()
        assert step is not None
        assert step.changed == ("dimse-timeout", "access.calling-ae-titles")
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]  # still OLD's configuration
        assert _find(server.port, "NEW") == [PENDING, PENDING, SUCCESS]
        assert _find(server.port, "OLD") is None
        newer = _associate(server.port, "NEW")
        try:
            timeouts = {a.requestor.ae_title.strip(): a.dimse_timeout for a in _acceptors(server)}
            assert timeouts == {"OLD": None, "NEW": 45}
        finally:
            newer.release()
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]
    finally:
        held.release()
    assert _reload_lines(caplog, logging.INFO) == [
        "SIGHUP: configuration reloaded: dimse-timeout, access.calling-ae-titles changed"
    ]
    assert server.config.access.everyone.calling_ae_titles == ("NEW",)


def _acceptors(server: WorklistServer) -> list[Any]:
    """The server's association threads (acceptors) still established."""
    return [a for a in server.ae.active_associations if a.is_established]


def test_an_invalid_file_is_refused_whole_with_one_line(
    serve: Serve, two_steps: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wlmserver")
    server, reloader, path = serve('[access]\ncalling-ae-titles = ["OLD"]\n')
    before = server.config
    # a valid change and a mistake: nothing of it applies
    path.write_text(
        '[server]\nmax-answers = 1\n[access]\ncalling-ae-titles = ["NEW"]\nhostz = []\n',
        encoding="utf-8",
    )
    assert reloader.reload() is None
    assert server.config is before and server.live.current is before
    assert _find(server.port, "OLD") == [PENDING, PENDING, SUCCESS]
    assert _find(server.port, "NEW") is None
    (line,) = _reload_lines(caplog, logging.ERROR)
    assert line.startswith(
        f"SIGHUP: configuration not reloaded, the one in use stays: {path}:5: access.hostz: "
        "unknown key; did you mean 'hosts'?"
    ), line
    # an option the server cannot run with is refused the same way
    path.write_text('[server]\nany-aet = "../WLM"\n', encoding="utf-8")
    assert reloader.reload() is None
    assert (
        "--any-aet '../WLM' is not a valid AE title folder name"
        in (_reload_lines(caplog, logging.ERROR)[-1])
    )
    assert not _reload_lines(caplog, logging.INFO)


def test_settings_that_need_a_restart_are_named_and_the_others_applied(
    serve: Serve, two_steps: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wlmserver")
    server, reloader, path = serve("")
    path.write_text(
        '[server]\nmax-answers = 1\njson-drops = true\naetitle = "OTHER"\nlog-level = "warn"\n',
        encoding="utf-8",
    )
    step = reloader.reload()
    assert step is not None
    assert step.changed == ("max-answers",)
    assert step.needs_restart == ("aetitle", "json-drops", "log-level")
    assert not server.config.json_drops and server.config.ae_title == "WLMSERVER"
    assert _find(server.port, "CT01") == [PENDING, OUT_OF_RESOURCES]  # --max-answers 1
    assert _reload_lines(caplog, logging.WARNING) == [
        "SIGHUP: aetitle, json-drops, log-level changed but need a restart; not applied"
    ]
    # the same file again: nothing changes, and the same settings still wait for a restart
    assert reloader.reload() == dataclasses.replace(step, changed=())
    assert _reload_lines(caplog, logging.INFO)[-1] == (
        "SIGHUP: configuration reloaded: nothing changed"
    )


def test_a_changed_profile_applies_to_the_next_association(serve: Serve, two_steps: Path) -> None:
    """A station filter added for CT01: its next association gets its own step only; the
    association it held open during the reload keeps the profile it started with."""
    server, reloader, path = serve("")
    held = _associate(server.port, "CT01")
    assert held.is_established
    try:
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]
        path.write_text(
            '[profiles.ct]\ncalling-ae-titles = ["CT*"]\nstation-filter = true\n',
            encoding="utf-8",
        )
        step = reloader.reload()
        assert step is not None and step.changed == ("profiles.ct",)
        assert _find(server.port, "CT01") == [PENDING, SUCCESS]
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]
    finally:
        held.release()


# -- TLS


def _tls_text(folder: Path, *extra: str) -> str:
    cas = ", ".join(f'"{folder / name}"' for name in ("ca.pem", *extra))
    return (
        "[server]\n"
        f'enable-tls = ["{folder / "server.key"}", "{folder / "server.pem"}"]\n'
        f"add-cert-file = [{cas}]\n"
    )


def _client(folder: Path, name: str = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / f"{name}.pem"), str(folder / f"{name}.key"))
    return context


def _served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate a new TLS handshake with the server presents (DER)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def _write_leaf(folder: Path, name: str, leaf: trustme.LeafCert) -> None:
    leaf.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    leaf.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))


def test_a_certificate_renewed_in_place_is_served_after_a_reload(
    serve: Serve, two_steps: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same paths, new files: new handshakes present the new certificate; a file that
    does not load is refused, and the certificate in use stays."""
    caplog.set_level(logging.INFO, "wlmserver")
    folder = tmp_path / "tls"
    folder.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    first = ca.issue_cert("localhost", "127.0.0.1")
    _write_leaf(folder, "server", first)
    _write_leaf(folder, "client", ca.issue_cert("modality.example"))
    server, reloader, _ = serve(_tls_text(folder))
    client = _client(folder)
    assert _served_certificate(server.port, client) == _der(first)
    held = _associate(server.port, "CT01", client)
    assert held.is_established
    try:
        renewed = ca.issue_cert("localhost", "127.0.0.1")
        _write_leaf(folder, "server", renewed)
        step = reloader.reload()
        assert step is not None and step.changed == ()
        assert _served_certificate(server.port, client) == _der(renewed)
        assert _statuses(held) == [PENDING, PENDING, SUCCESS]  # its connection stays as it was
        assert _reload_lines(caplog, logging.INFO)[-1] == (
            "SIGHUP: configuration reloaded: TLS files server.key, server.pem changed; "
            "TLS files read again"
        )
        (folder / "server.pem").write_text("not a certificate\n", encoding="utf-8")
        assert reloader.reload() is None
        assert _reload_lines(caplog, logging.ERROR)[-1] == (
            "SIGHUP: configuration not reloaded, the one in use stays: +tls: the certificate "
            f"file {folder / 'server.pem'} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
        assert _served_certificate(server.port, client) == _der(renewed)
        assert _find(server.port, "CT01", client) == [PENDING, PENDING, SUCCESS]
    finally:
        held.release()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_trusted_cas_and_certificate_bindings_reload(
    serve: Serve, two_steps: Path, certs: Certs
) -> None:
    """A second CA trusted, then CT01 tied to its certificate: each applies to the next
    handshake and association."""
    folder = certs.folder
    server, reloader, path = serve(_tls_text(folder))
    rogue, ct01 = _client(folder, "rogue"), _client(folder, "ct01")
    assert _find(server.port, "ROGUE", rogue) is None  # signed by a CA not trusted
    assert _find(server.port, "FINDSCU", ct01) == [PENDING, PENDING, SUCCESS]
    path.write_text(
        _tls_text(folder, "other-ca.pem")
        + '\n[access.certificates]\nCT01 = ["CN=ct01.example.org"]\n',
        encoding="utf-8",
    )
    step = reloader.reload()
    assert step is not None
    assert step.changed == ("access.certificates", "add-cert-file")
    assert _find(server.port, "ROGUE", rogue) == [PENDING, PENDING, SUCCESS]
    assert _find(server.port, "FINDSCU", ct01) is None
    assert _find(server.port, "CT01", ct01) == [PENDING, PENDING, SUCCESS]


def test_bindings_cannot_be_added_while_tls_is_off(
    serve: Serve, two_steps: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS is turned on at a restart only: a file that turns it on and binds titles would
    leave every bound title refused until then, so it is refused whole."""
    caplog.set_level(logging.INFO, "wlmserver")
    server, reloader, path = serve("")
    path.write_text(
        _tls_text(certs.folder) + '\n[access.certificates]\nCT01 = ["CN=ct01.example.org"]\n',
        encoding="utf-8",
    )
    assert reloader.reload() is None
    (line,) = _reload_lines(caplog, logging.ERROR)
    assert f"{path}:5: access.certificates: needs TLS with client certificates verified" in line
    assert "(TLS is turned on or off at a restart only)" in line
    assert _find(server.port, "CT01") == [PENDING, PENDING, SUCCESS]


# -- the real signal


class _Lines:
    """A process's stderr, read line by line in a thread of its own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def having(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def join(self) -> str:
        self._thread.join(timeout=20)
        return "\n".join(self.lines)


def test_sighup_reloads_the_running_wlmserver(two_steps: Path, tmp_path: Path) -> None:
    """``wlmserver --config FILE``: SIGHUP after the file adds a calling AE title; the new
    title is accepted, an association open across the reload completes its queries, and an
    invalid file keeps the configuration with one line naming file, line and key."""
    path = tmp_path / "wlmserver.toml"
    path.write_text('[access]\ncalling-ae-titles = ["OLD"]\n', encoding="utf-8")
    command = [sys.executable, "-m", "wlmserver", "--config", str(path), "-dfp", str(two_steps)]
    command += ["--bind", "127.0.0.1", "--rescan-interval", "0", "0"]
    process, port, _ = start_command(command)
    stderr = _Lines(process)
    try:
        held = _associate(port, "OLD")
        assert held.is_established
        try:
            assert _find(port, "NEW") is None
            path.write_text('[access]\ncalling-ae-titles = ["OLD", "NEW"]\n', encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            assert until(lambda: stderr.having("SIGHUP: rescan done")), stderr.lines
            assert _find(port, "NEW") == [PENDING, PENDING, SUCCESS]
            assert _statuses(held) == [PENDING, PENDING, SUCCESS]
            path.write_text('[access]\ncalling-ae-title = ["NEW"]\n', encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            assert until(lambda: len(stderr.having("SIGHUP: rescan done")) == 2), stderr.lines
            assert _statuses(held) == [PENDING, PENDING, SUCCESS]
        finally:
            held.release()
        assert _find(port, "OLD") == [PENDING, PENDING, SUCCESS]  # the old lists stay
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    err = stderr.join()
    assert process.returncode == 0, err
    assert len(stderr.having("SIGHUP: configuration reloaded: access.calling-ae-titles")) == 1
    (refused,) = stderr.having("SIGHUP: configuration not reloaded, the one in use stays: ")
    assert f"{path}:2: access.calling-ae-title: unknown key" in refused, refused
    assert "Traceback" not in err and "P1" not in err  # no traceback, no patient data


# -- the README


@pytest.mark.parametrize(("name", "text"), documented("configuration.md", "- **Applied**"))
def test_the_docs_say_what_reloads_and_what_needs_a_restart(name: str, text: str) -> None:
    """ "Signals" (docs/configuration.md, and the README while it has it): each setting is
    named in the bullet of its kind, not the other."""
    applied = text[text.index("- **Applied**") : text.index("- **Needs a restart**")]
    restart = text[text.index("- **Needs a restart**") : text.index("**Open associations")]
    # named in words there: the tables, TLS; network-timeout has no option
    for field in LIVE - {"access", "profiles", "network_timeout", *TLS_FIELDS}:
        name = f"`{setting_name(field)}`"
        assert name in applied and name not in restart, name
    for name in [
        *(setting_name(f) for f in RESTART - {"config_file"}),
        *map(setting_name, LOGGING_OPTIONS),
    ]:
        assert f"`{name}`" in restart and f"`{name}`" not in applied, name


def test_an_unexpected_error_in_a_reload_does_not_stop_the_server(
    serve: Serve, two_steps: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    caplog.set_level(logging.INFO, "wlmserver")
    server, reloader, path = serve("")
    path.write_text("[server]\nmax-answers = 1\n", encoding="utf-8")

    def broken(config: Config, context: ssl.SSLContext | None) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "reconfigure", broken)
    reloader.hangup()
    assert _reload_lines(caplog, logging.ERROR) == ["SIGHUP: the reload failed; serving goes on"]
    assert (
        _reload_lines(caplog, logging.INFO)[-1] == "SIGHUP: rescan done, 0 files were out of date"
    )
    assert _find(server.port, "CT01") == [PENDING, PENDING, SUCCESS]
