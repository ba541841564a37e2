"""Caps on connections and threads (issue 20, finding 8): connections that have not sent their
association request, from all hosts; the threads they cost; IPv6 peers counted per /64.

600 silent connections from many addresses held 353 threads and gave "can't start new thread"
tracebacks at about 1,500 (under a 4 GB address-space limit); the only bound was per address,
and one IPv6 host has a /64 of them. Loopback only: 127.0.0.0/8 gives many IPv4 "hosts".
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import StartServer, echo, until, write_wl

from wlmserver.config import Config
from wlmserver.service import admission as admission_module
from wlmserver.service.admission import Admission, peer_group
from wlmserver.service.server import Listener


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    return db


def _silent(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def _closed_at_once(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset) within the bound."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_connections_from_many_hosts_are_capped_in_all(
    start_server: StartServer, served: Path, sockets: list[socket.socket]
) -> None:
    server = start_server(max_pending_connections=5, max_associations_per_peer=10)
    before = threading.active_count()
    for n in range(20):  # 20 hosts, one silent connection each: no per-host limit is reached
        sockets.append(_silent(server.port, f"127.0.0.{n + 2}"))
    held, closed = sockets[:5], sockets[5:]
    assert all(_closed_at_once(sock) for sock in closed)
    # the five held cost their two threads each; the others none that stayed
    assert until(lambda: threading.active_count() <= before + 2 * 5 + 2, 10)
    assert len(server.ae.active_associations) == 5
    for sock in held:
        sock.close()
    assert until(lambda: not server.ae.active_associations)
    assert echo(server.port) == 0  # a modality gets in again at once


def test_a_connection_is_closed_while_the_threads_are_at_their_cap(
    start_server: StartServer,
    served: Path,
    sockets: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server()
    monkeypatch.setattr(admission_module, "THREAD_HEADROOM", -10_000)  # always over
    with caplog.at_level(logging.WARNING, "wlmserver"):
        sock = _silent(server.port, "127.0.0.2")
        sockets.append(sock)
        assert _closed_at_once(sock)
    assert any("threads running" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert echo(server.port) == 0


def test_a_connection_that_cannot_get_a_thread_is_one_line_not_a_traceback(
    start_server: StartServer,
    served: Path,
    sockets: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = start_server()
    original = Listener.process_request

    def no_thread(self: Any, request: Any, client_address: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Listener, "process_request", no_thread)
    with caplog.at_level(logging.WARNING, "wlmserver"):
        sock = _silent(server.port, "127.0.0.2")
        sockets.append(sock)
        assert _closed_at_once(sock)
        assert until(lambda: any("cannot serve" in r.getMessage() for r in caplog.records), 5)
    (line,) = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert "RuntimeError: can't start new thread" in line
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.setattr(Listener, "process_request", original)
    assert until(lambda: server._admission is not None and not server._admission.waiting(), 5)
    assert echo(server.port) == 0


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", True),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("10.0.0.1", "::ffff:10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
        ("fe80::1%eth0", "fe80::2%eth1", True),
    ],
)
def test_a_peer_is_an_ipv4_address_or_an_ipv6_64(first: str, second: str, same: bool) -> None:
    assert (peer_group(first) == peer_group(second)) is same


def test_waiting_connections_of_one_ipv6_64_share_the_per_peer_limit() -> None:
    admission = Admission(Config(Path("."), max_associations_per_peer=2))
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        accept = admission.accept
        assert accept(pairs[0][0], "2001:db8:1:2::1") is None
        assert accept(pairs[1][0], "2001:db8:1:2::2") is None
        refused = accept(pairs[2][0], "2001:db8:1:2::3")  # the same host, a new address
        assert refused is not None and "2001:db8:1:2::/64" in refused
        assert accept(pairs[3][0], "2001:db8:1:3::1") is None  # another /64
        pairs[0][0].close()  # a slot is free once a connection closes
        assert accept(pairs[2][0], "2001:db8:1:2::3") is None
    finally:
        for a, b in pairs:
            a.close()
            b.close()


class _Association:
    """As much of a pynetdicom association as :meth:`Admission.admit` reads."""

    def __init__(self, address: str) -> None:
        self.requestor = SimpleNamespace(address=address)
        self.ident = None

    def is_alive(self) -> bool:
        return True


def test_associations_of_one_ipv6_64_share_the_per_peer_limit() -> None:
    admission = Admission(Config(Path("."), max_associations_per_peer=2))
    held = [_Association(a) for a in ("2001:db8::1", "2001:db8::2:1", "2001:db8::ffff:3")]
    assert admission.admit(held[0]) is None
    assert admission.admit(held[1]) is None
    refused = admission.admit(held[2])
    assert refused is not None and "2001:db8::/64" in refused
    other = _Association("2001:db8:0:1::1")
    assert admission.admit(other) is None


def test_a_released_association_frees_its_slot_at_once(
    start_server: StartServer, served: Path
) -> None:
    """A modality that releases and asks again at once was refused now and then: its released
    association, its thread a few milliseconds from its end, still counted (the benchmark's
    eight lean clients from one host met it)."""
    server = start_server(max_associations_per_peer=1)
    for _ in range(40):
        assert echo(server.port) == 0
