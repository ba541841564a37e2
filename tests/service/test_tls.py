"""DICOM TLS (PS3.15 Annex B, BCP 195): the server's TLS listener with pynetdicom and raw
sockets as clients, the handshake in the connection's thread, and the TLS options.

Certificates are made per module with trustme: a CA signing the server's and a client's
certificate, and a second CA, not trusted by the server, signing a "rogue" client's. Every
server listens on a free loopback port; waits are bounded polls on outcomes.
"""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import ssl
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, until, write_wl
from cryptography.hazmat.primitives import serialization
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from tls_certs import Certs, make_certs

from wlmserver.cli import main
from wlmserver.config import Config
from wlmserver.config.access import Access
from wlmserver.config.certificates import Binding, CertificateBindings, parse_identity
from wlmserver.config.loader import config_from_args
from wlmserver.config.options import build_parser
from wlmserver.matching.status import Status
from wlmserver.service import tls
from wlmserver.service.server import MODALITY_WORKLIST_FIND

PENDING, SUCCESS, CANCEL = int(Status.PENDING), int(Status.SUCCESS), int(Status.CANCEL)
TLS_LOGGER = "wlmserver.service.tls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    write_wl(db / "WLM" / "b.wl", PatientID="P2")
    return db


def client_context(
    certs: Certs,
    name: str | None = "client",
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A TLS client context trusting the server's CA, with ``name``'s certificate (None:
    none)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    if name is not None:
        context.load_cert_chain(str(certs.cert(name)), str(certs.key(name)))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    query.ScheduledProcedureStepSequence = [item]
    return query


def tls_find(
    port: int,
    context: ssl.SSLContext | None,
    cancel_after: int | None = None,
    aet: str = "WLM",
    calling: str = "TLSSCU",
) -> list[int] | None:
    """One C-FIND over a new association (TLS with ``context``, plain TCP without) from
    ``calling``: the statuses of its responses, or None when no association was
    established."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.dimse_timeout = 30
    tls_args = None if context is None else (context, "localhost")
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, tls_args=tls_args)
    if not assoc.is_established:
        return None
    statuses: list[int] = []
    try:
        for status, _ in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND):
            assert status is not None, "no response (timeout or abort)"
            statuses.append(int(status.Status))
            if cancel_after is not None and len(statuses) == cancel_after:
                assoc.send_c_cancel(1, query_model=MODALITY_WORKLIST_FIND)
    finally:
        assoc.release()
    return statuses


def _messages(caplog: pytest.LogCaptureFixture, name: str, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == name and (level is None or r.levelno == level)
    ]


def _handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in _messages(caplog, TLS_LOGGER) if "TLS handshake from" in m]


def _association_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        m for m in _messages(caplog, "wlmserver.service.handlers") if m.startswith("association ")
    ]


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    server_records = [r for r in caplog.records if r.name.startswith("wlmserver")]
    assert not [r for r in server_records if r.exc_info], "a traceback was logged"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        yield caplog


def _refused_once(logs: pytest.LogCaptureFixture, reason: str) -> None:
    """One handshake failure line naming the peer and ``reason``, and the association line
    saying where it ended; no traceback."""
    assert until(lambda: len(_handshake_failures(logs)) >= 1), logs.text
    assert until(lambda: any("TLS handshake" in m for m in _association_lines(logs))), logs.text
    (line,) = _handshake_failures(logs)
    assert line.startswith("TLS handshake from 127.0.0.1:") and line.endswith(reason), line
    (ended,) = [m for m in _association_lines(logs) if "TLS handshake" in m]
    assert "closed at the TLS handshake" in ended, ended
    _no_tracebacks(logs)
    # and nothing read after it: the bytes a TLS 1.3 client sends on after a handshake the
    # server refused are not parsed as PDUs ("PDU type 0x02 of 1245879828 bytes refused")
    time.sleep(0.2)
    loud = [
        r.getMessage()
        for r in logs.records
        if r.levelno >= logging.WARNING and r.name.startswith("wlmserver")
    ]
    assert loud == [line], loud


# --------------------------------------------------------------------------- who is answered
def test_a_trusted_client_is_answered_over_tls13(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())  # +cf given: a client certificate is required
    assert server.tls_port == server.port
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]
    assert until(lambda: any("(TLSv1.3): released" in m for m in _association_lines(logs)))
    assert not _handshake_failures(logs)


def test_tls12_is_answered_and_the_fields_name_the_version(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())
    context = client_context(certs, maximum=ssl.TLSVersion.TLSv1_2)
    assert tls_find(server.port, context) == [PENDING, PENDING, SUCCESS]
    assert until(lambda: any("(TLSv1.2): released" in m for m in _association_lines(logs)))
    fields = [getattr(r, "fields", {}) for r in logs.records]
    query = next(f for f in fields if f.get("event") == "query")
    association = next(f for f in fields if f.get("event") == "association")
    assert query["tls"] == association["tls"] == "TLSv1.2"
    queries = [m for m in logs.messages if m.startswith("C-FIND from TLSSCU@")]
    assert len(queries) == 1 and "TLSv" not in queries[0]  # its INFO text stays short


def test_a_client_signed_by_another_ca_is_refused_and_others_are_still_served(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())
    assert tls_find(server.port, client_context(certs, "rogue")) is None
    _refused_once(logs, "certificate verify failed: unable to get local issuer certificate")
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]


def test_a_client_without_a_certificate_is_refused_when_one_is_required(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server(tls_peer_cert="require"))
    assert tls_find(server.port, client_context(certs, None)) is None
    _refused_once(logs, "no client certificate (one is required)")
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]


def test_verify_peer_cert_answers_a_client_without_one_and_refuses_a_rogue_one(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server(tls_peer_cert="verify"))  # -vc
    assert tls_find(server.port, client_context(certs, None)) == [PENDING, PENDING, SUCCESS]
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]
    assert tls_find(server.port, client_context(certs, "rogue")) is None
    _refused_once(logs, "certificate verify failed: unable to get local issuer certificate")


@pytest.mark.parametrize("trusted", [False, True], ids=["no-cf", "with-cf"])
def test_ignore_peer_cert_answers_any_client(
    start_server: StartServer, served: Path, certs: Certs, trusted: bool
) -> None:
    """``-ic`` (DCMTK: don't verify the peer certificate): no certificate is asked for, so
    a client without one, and one signed by an untrusted CA, are both answered, with or
    without trusted certificates given. Without ``+cf``/``+cd``, ``-ic`` is the default."""
    fields = certs.server(tls_ca_files=(certs.ca,) if trusted else ())
    server = start_server(**fields, tls_peer_cert="ignore" if trusted else None)
    for name in (None, "rogue", "client"):
        assert tls_find(server.port, client_context(certs, name)) == [PENDING, PENDING, SUCCESS]


def test_a_plain_tcp_client_on_the_tls_port_is_refused(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server())
    assert tls_find(server.port, None) is None
    _refused_once(logs, "not a TLS client (a DICOM client without TLS?)")
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]


def test_a_client_offering_only_tls11_is_refused(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server(tls_peer_cert="ignore"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at level 0
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw)
    _refused_once(logs, "the client offers no TLS version from 1.2 on")


def test_plain_and_tls_side_by_side(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(**certs.server(tls_port=0))
    assert server.tls_port not in (None, server.port)
    assert server.tls_port is not None
    assert tls_find(server.port, None) == [PENDING, PENDING, SUCCESS]
    assert tls_find(server.tls_port, client_context(certs)) == [PENDING, PENDING, SUCCESS]
    assert tls_find(server.port, client_context(certs)) is None  # the plain port is plain
    lines_before = _association_lines(logs)
    logs.clear()
    assert tls_find(server.tls_port, None) is None
    _refused_once(logs, "not a TLS client (a DICOM client without TLS?)")
    lines = lines_before + _association_lines(logs)
    assert any("(TLSv1.3): released" in m for m in lines)
    assert any(
        m.startswith("association TLSSCU -> WLM from 127.0.0.1:")
        and ": released" in m
        and "TLSv" not in m
        for m in lines
    )


# --------------------------------------------------------------------------- the handshake
def test_a_silent_plain_connection_does_not_hold_up_tls_clients(
    start_server: StartServer, served: Path, certs: Certs
) -> None:
    """pynetdicom shook hands in its accept loop: one silent connection stopped the listener
    (here the ACSE timeout is 30 s, and the client gives up after 10 s)."""
    server = start_server(**certs.server())
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        for _ in range(2):
            assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open, its handshake still waited for
            silent.recv(1)


def test_the_handshake_has_a_deadline(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    """The ACSE timeout bounds the whole handshake, not each read: a client dribbling its
    ClientHello a byte every 50 ms (for 10 s) is closed after the 0.5 s, as one sending
    nothing would be."""
    server = start_server(**certs.server(), acse_timeout=0.5)
    record = bytes.fromhex("1603010200") + bytes(195)  # a 512-byte handshake record begins
    started = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        for byte in record:
            try:
                slow.sendall(bytes([byte]))
                readable, _, _ = select.select([slow], [], [], 0.05)
                if readable and slow.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except OSError:  # reset by the server
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < 5, closed_after
    _refused_once(logs, "no TLS handshake within 0.5 s (ACSE timeout)")


def test_connections_in_their_handshake_count_against_the_per_host_limit(
    start_server: StartServer, served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    """``--max-associations-per-peer`` bounds a host's connections still waiting, those in
    their TLS handshake included: one more is closed at once, without a handshake."""
    server = start_server(**certs.server(), max_associations_per_peer=1)
    with socket.create_connection(("127.0.0.1", server.port)):  # silent
        handshakes = server._handshakes
        assert handshakes is not None
        assert until(lambda: bool(handshakes._running))
        with socket.create_connection(("127.0.0.1", server.port)) as another:
            another.settimeout(10)
            assert another.recv(1) == b""  # closed at once (well before the ACSE timeout)
        assert any("waiting for their association request" in m for m in logs.messages)
        assert not _handshake_failures(logs)
    assert until(lambda: not handshakes._running)  # the silent one closed: its slot is free
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]


def test_stop_ends_handshakes_still_waited_for(
    served: Path, certs: Certs, logs: pytest.LogCaptureFixture
) -> None:
    from wlmserver.service.server import WorklistServer

    server = WorklistServer(
        Config(
            data_files_path=served, port=0, bind="127.0.0.1", rescan_interval=0, **certs.server()
        )
    )
    server.start()
    try:
        silent = socket.create_connection(("127.0.0.1", server.port))
        assert server._handshakes is not None
        handshakes = server._handshakes
        assert until(lambda: bool(handshakes._running))
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 5
    silent.settimeout(10)
    with silent:
        assert silent.recv(1) == b""
    assert not _handshake_failures(logs)  # the server stopping is no failure of the peer's


# --------------------------------------------------------------------------- many answers
@pytest.fixture
def ssl_io_threads(monkeypatch: pytest.MonkeyPatch) -> dict[int, set[str]]:
    """The threads that read or write each server-side SSL socket (after its handshake)."""
    seen: dict[int, set[str]] = defaultdict(set)
    for name in ("send", "sendall", "recv", "recv_into"):
        original = getattr(ssl.SSLSocket, name)

        def spy(self: ssl.SSLSocket, *args: Any, __original: Any = original, **kw: Any) -> Any:
            if self.server_side:
                seen[id(self)].add(threading.current_thread().name)
            return __original(self, *args, **kw)

        monkeypatch.setattr(ssl.SSLSocket, name, spy)
    return seen


def test_many_answers_over_tls_are_read_and_written_by_one_thread(
    start_server: StartServer, db: Path, certs: Certs, ssl_io_threads: dict[int, set[str]]
) -> None:
    """The fast path writes answers from the handler's thread while the DUL thread reads:
    not on an SSL socket (one OpenSSL object must not be used by two threads at once)."""
    steps = 500
    write_wl(
        db / "WLM" / "many.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(steps)]
    )
    server = start_server(**certs.server())
    statuses = tls_find(server.port, client_context(certs))
    assert statuses == [PENDING] * steps + [SUCCESS]
    assert ssl_io_threads, "no server-side SSL socket was used"
    for threads in ssl_io_threads.values():
        assert len(threads) == 1, threads
        assert not any(t.startswith("AcceptorThread") for t in threads), threads


def test_a_cancel_over_tls_is_honoured_between_answers(
    start_server: StartServer, db: Path, certs: Certs
) -> None:
    steps = 5000  # far more answers than are sent before the cancel is read
    write_wl(
        db / "WLM" / "many.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(steps)]
    )
    server = start_server(**certs.server())
    statuses = tls_find(server.port, client_context(certs), cancel_after=1)
    assert statuses is not None
    assert statuses[-1] == CANCEL, (len(statuses), statuses[-3:])
    assert statuses.count(PENDING) < steps


# --------------------------------------------------------------------------- files and options
def _encrypted_key(certs: Certs, folder: Path) -> Path:
    key = serialization.load_pem_private_key(certs.key("server").read_bytes(), None)
    path = folder / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    path = tmp_path / "junk.pem"
    path.write_text("not a PEM file\n")
    return path


def test_server_context_errors_name_the_file(
    db: Path, certs: Certs, junk: Path, tmp_path: Path
) -> None:
    key, cert = certs.key("server"), certs.cert("server")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tls_key": tmp_path / "nokey"},
            f"+tls: the private key file {tmp_path / 'nokey'} does not exist",
        ),
        ({"tls_cert": tmp_path}, f"+tls: the certificate file {tmp_path} is a folder"),
        ({"tls_cert": junk}, f"+tls: the certificate file {junk} holds no PEM certificate"),
        ({"tls_key": junk}, f"+tls: the private key file {junk} holds no PEM private key"),
        ({"tls_key": cert}, f"+tls: the private key file {cert} holds no PEM private key"),
        ({"tls_cert": key}, f"+tls: the certificate file {key} holds no PEM certificate"),
        (
            {"tls_key": certs.key("client")},
            f"+tls: the private key {certs.key('client')} does not belong to the certificate "
            f"{cert}",
        ),
        (
            {"tls_key": _encrypted_key(certs, tmp_path)},
            f"+tls: the private key file {tmp_path / 'encrypted.key'} is encrypted",
        ),
        ({"tls_ca_files": (junk,)}, f"+cf: the certificate file {junk} holds no PEM"),
        (
            {"tls_ca_files": (tmp_path / "no.pem",)},
            f"+cf: the certificate file {tmp_path / 'no.pem'} does not exist",
        ),
        ({"tls_ca_dirs": (empty,)}, f"+cd: the folder {empty} holds no PEM certificate file"),
        (
            {"tls_ca_dirs": (tmp_path / "nodir",)},
            f"+cd: the folder {tmp_path / 'nodir'} does not exist",
        ),
        ({"tls_ca_dirs": (junk,)}, f"+cd: {junk} is not a folder"),
        ({"tls_ca_files": (), "tls_peer_cert": "require"}, "-rc: client certificates cannot"),
        ({"tls_ca_files": (), "tls_peer_cert": "verify"}, "-vc: client certificates cannot"),
    ]
    for overrides, message in cases:
        config = Config(data_files_path=db, **certs.server(**overrides))
        with pytest.raises(tls.TlsSetupError) as info:
            tls.server_context(config)
        assert str(info.value).startswith(message), (overrides, str(info.value))
        assert "\n" not in str(info.value)


def test_a_folder_of_trusted_certificates(
    start_server: StartServer, served: Path, certs: Certs
) -> None:
    """``+cd``: every PEM certificate file of the folder (other files are skipped), whether or
    not OpenSSL's hashed names (c_rehash) are there."""
    folder = certs.folder / "trusted"
    folder.mkdir(exist_ok=True)
    (folder / "ca.crt").write_bytes(certs.ca.read_bytes())
    (folder / "README").write_text("trusted CAs\n")
    server = start_server(**certs.server(tls_ca_files=(), tls_ca_dirs=(folder,)))
    assert tls_find(server.port, client_context(certs)) == [PENDING, PENDING, SUCCESS]
    assert tls_find(server.port, client_context(certs, "rogue")) is None


def test_the_security_profile(db: Path, certs: Certs) -> None:
    """BCP 195: TLS 1.2 at least; for TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305;
    the system's trusted CAs are not trusted."""
    context = tls.server_context(Config(data_files_path=db, **certs.server()))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(
        c["name"].startswith("ECDHE-") and ("GCM" in c["name"] or "CHACHA20" in c["name"])
        for c in tls12
    ), [c["name"] for c in tls12]
    assert context.cert_store_stats()["x509_ca"] == 1  # ca.pem only
    assert context.options & ssl.OP_NO_RENEGOTIATION and context.options & ssl.OP_NO_COMPRESSION


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("usage: "), err
    return err.strip().splitlines()[-1]


def test_tls_options_are_dcmtks(db: Path, certs: Certs) -> None:
    args = build_parser().parse_args(
        [
            "+tls",
            str(certs.key("server")),
            str(certs.cert("server")),
            "+cf",
            str(certs.ca),
            "--add-cert-file",
            str(certs.other_ca),
            "+cd",
            str(certs.folder),
            "-vc",
            "--tls-port",
            "2762",
            "104",
        ]
    )
    config = config_from_args(args)
    assert (config.tls_key, config.tls_cert) == (certs.key("server"), certs.cert("server"))
    assert config.tls_ca_files == (certs.ca, certs.other_ca)
    assert config.tls_ca_dirs == (certs.folder,)
    assert (config.tls_peer_cert_mode, config.tls_port, config.port) == ("verify", 2762, 104)
    plain = config_from_args(build_parser().parse_args([]))
    assert not plain.tls_enabled and plain.tls_port is None
    tls_only = config_from_args(
        build_parser().parse_args(["--enable-tls", "k", "c", "--ignore-peer-cert"])
    )
    assert tls_only.tls_enabled and tls_only.tls_peer_cert_mode == "ignore"
    default = config_from_args(build_parser().parse_args(["+tls", "k", "c"]))
    assert default.tls_peer_cert_mode == "ignore"  # nothing to verify with
    default = config_from_args(build_parser().parse_args(["+tls", "k", "c", "+cf", "ca"]))
    assert default.tls_peer_cert_mode == "require"


def test_bad_tls_options_are_usage_errors(
    db: Path, certs: Certs, junk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, cert, ca = str(certs.key("server")), str(certs.cert("server")), str(certs.ca)
    base = ["-dfp", str(db)]
    cases = [
        (["+cf", ca], "+cf needs +tls KEY CERT"),
        (["+cd", str(certs.folder)], "+cd needs +tls KEY CERT"),
        (["--tls-port", "2762"], "--tls-port needs +tls KEY CERT"),
        (["-rc"], "-rc needs +tls KEY CERT"),
        (["-ic"], "-ic needs +tls KEY CERT"),
        (["+tls", key, cert, "-rc"], "-rc needs trusted certificates to verify clients with"),
        (["+tls", key, cert, "-vc"], "-vc needs trusted certificates to verify clients with"),
        (["+tls", key, cert, "+cf", ca, "-rc", "-ic"], "not allowed with argument"),
        (["+tls", key], "expected 2 arguments"),
        (["+tls", key, cert, "--tls-port", "2762", "2762"], "--tls-port 2762 is the plain"),
        (["+tls", key, cert, "--tls-port", "70000"], "a port is 0 to 65535"),
        (
            ["+tls", str(db / "missing.key"), cert],
            f"the private key file {db / 'missing.key'} does not exist",
        ),
        (["+tls", key, str(junk)], f"the certificate file {junk} holds no PEM certificate"),
        (["+tls", str(certs.key("client")), cert], "does not belong to the certificate"),
        (["+tls", key, cert, "+cf", str(junk)], f"+cf: the certificate file {junk} holds no"),
        (["+xyz"], "unrecognized arguments: +xyz"),
    ]
    for argv, message in cases:
        line = _usage_error([*base, *argv], capsys)
        assert line.startswith("wlmserver: error: ") and message in line, (argv, line)


def test_the_failure_reasons() -> None:
    def reason(exc: BaseException) -> str:
        return tls.failure_reason(exc, 30.0)[0]

    refused = ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate")
    refused.reason = "SSLV3_ALERT_BAD_CERTIFICATE"
    assert reason(refused) == "the client refused the handshake (sslv3 alert bad certificate)"
    assert tls.failure_reason(ssl.SSLEOFError(), 30) == ("closed by the peer", logging.INFO)
    assert reason(ConnectionResetError()) == "closed by the peer"
    assert reason(TimeoutError()) == "no TLS handshake within 30 s (ACSE timeout)"


def test_an_unreadable_key_is_named(
    db: Path, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "private.key"
    key.write_bytes(certs.key("server").read_bytes())
    key.chmod(0)
    if os.access(key, os.R_OK):  # root reads any file: refuse it as the kernel would
        original = Path.open

        def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == key:
                raise PermissionError(13, "Permission denied", str(key))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)
    message = f"+tls: cannot read the private key file {key}: Permission denied"
    with pytest.raises(tls.TlsSetupError, match=re.escape(message)):
        tls.server_context(Config(data_files_path=db, **certs.server(tls_key=key)))


def _rejected(port: int, context: ssl.SSLContext | None, calling: str) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ result, source and reason an association from ``calling`` gets."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    tls_args = None if context is None else (context, "localhost")
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM", tls_args=tls_args)
    if assoc.is_established:
        assoc.release()
        raise AssertionError(f"{calling} was not rejected")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_a_client_certificate_bound_to_its_calling_ae_title(
    start_server: StartServer, served: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """[access.certificates] CT01 = ["DNS:ct01.example.org"]: CT01's certificate is served as
    CT01 and rejected as FINDSCU (calling AE title not recognized); CT01 is rejected with
    another certificate and over the plain port; a title bound to nothing is served as
    before, unless refuse-unbound-titles."""
    bound = Binding("CT01", frozenset({parse_identity("DNS:ct01.example.org")}))
    table = CertificateBindings((bound,))
    server = start_server(**certs.server(access=Access(certificates=table), tls_port=0))
    tls_port = server.tls_port
    assert tls_port is not None and tls_port != server.port
    caplog.set_level(logging.INFO, "wlmserver")
    ct01, client = client_context(certs, "ct01"), client_context(certs, "client")
    answered = [PENDING, PENDING, SUCCESS]
    assert tls_find(tls_port, ct01, calling="CT01") == answered
    calling_aet_not_recognized = (0x01, 0x01, 0x03)
    assert _rejected(tls_port, ct01, "FINDSCU") == calling_aet_not_recognized
    assert _rejected(tls_port, client, "CT01") == calling_aet_not_recognized
    assert _rejected(server.port, None, "CT01") == calling_aet_not_recognized
    assert tls_find(tls_port, client, calling="FINDSCU") == answered  # neither is bound
    assert tls_find(server.port, None, calling="FINDSCU") == answered
    reasons = [
        m
        for m in _messages(caplog, "wlmserver.service.handlers", logging.WARNING)
        if m.startswith("association from")
    ]
    assert len(reasons) == 3, reasons
    assert "FINDSCU@127.0.0.1" in reasons[0]
    assert (
        "the client certificate CN=ct01.example.org is bound to other calling AE titles"
        in (reasons[0])
    )
    assert "is not one bound to calling AE title CT01 (access.certificates: CT01)" in reasons[1]
    assert "calling AE title CT01 is bound to a client certificate: TLS only" in reasons[2]

    strict = start_server(
        **certs.server(
            access=Access(certificates=CertificateBindings((bound,), refuse_unbound=True))
        )
    )
    assert tls_find(strict.port, ct01, calling="CT01") == answered
    assert _rejected(strict.port, client, "FINDSCU") == calling_aet_not_recognized
