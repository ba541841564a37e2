"""Accepted associations wait for work instead of polling, and still do everything on time:
answer after being idle, time out, end on abort, and stop with the server."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, echo, find, write_wl
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import dul as pynetdicom_dul

from wlmserver.matching.status import Status
from wlmserver.service import reactor
from wlmserver.service.server import MODALITY_WORKLIST_FIND


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    return query


def _associate(port: int) -> Any:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    assert assoc.is_established
    return assoc


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="P1", sps=[{"ScheduledProcedureStepID": "S1"}])
    return db


def test_installed_by_the_server(start_server: StartServer, served: Path) -> None:
    start_server()
    assert reactor.installed()
    assert isinstance(pynetdicom_dul.time, reactor._Clock)


def test_idle_associations_wait_and_then_answer(start_server: StartServer, served: Path) -> None:
    server = start_server()
    clock = pynetdicom_dul.time
    assert isinstance(clock, reactor._Clock)
    calls = 0
    real_wait = clock._wait

    def counting(thread: Any, seconds: float) -> None:
        nonlocal calls
        calls += thread.assoc.is_acceptor  # the client's own DULs poll as pynetdicom does
        real_wait(thread, seconds)

    associations = [_associate(server.port) for _ in range(4)]
    clock._wait = counting
    try:
        time.sleep(1.0)  # idle; pynetdicom's own reactor would wake 4 x 1,000 times
    finally:
        clock._wait = real_wait
    # each idle acceptor DUL wakes about 1 / DUL_IDLE times a second
    assert calls <= 4 * (1.0 / reactor.DUL_IDLE + 5), calls
    try:
        for assoc in associations:  # incoming data wakes a waiting association at once
            started = time.perf_counter()
            responses = list(assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND))
            assert [int(s.Status) for s, _ in responses] == [0xFF00, 0x0000]
            assert time.perf_counter() - started < 2.0
    finally:
        for assoc in associations:
            assoc.release()
    assert echo(server.port) == int(Status.SUCCESS)


def test_network_timeout_still_ends_an_idle_association(
    start_server: StartServer, served: Path
) -> None:
    server = start_server(network_timeout=0.5)
    assoc = _associate(server.port)
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established, "the server did not end the idle association"
    assert find(server.port, _query())[-1][0] == int(Status.SUCCESS)


def test_peer_abort_ends_the_association_and_serving_goes_on(
    start_server: StartServer, served: Path
) -> None:
    server = start_server()
    assoc = _associate(server.port)
    time.sleep(0.3)  # let the server side go idle first
    assoc.abort()
    deadline = time.monotonic() + 5
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.ae.active_associations
    assert find(server.port, _query())[-1][0] == int(Status.SUCCESS)


def test_server_stops_promptly_with_idle_associations_open(
    start_server: StartServer, served: Path
) -> None:
    server = start_server()
    associations = [_associate(server.port) for _ in range(3)]
    time.sleep(0.3)
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 5
    for assoc in associations:
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not assoc.is_established


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux TCP_QUICKACK only")
def test_quick_ack_arms_tcp_quickack() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        server_side, _ = listener.accept()
        with server_side:
            client.sendall(b"x" * 10)
            server_side.recv(10)
            server_side.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            reactor.quick_ack(server_side)
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1


def test_the_server_acknowledges_promptly_while_it_waits_for_requests(
    start_server: StartServer, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before each wait for the peer's data the accepted socket is put in quick-ACK mode, so
    a Nagle client's second write (findscu writes a PDU in two) is not held back by a
    delayed ACK (tools/nagle.py measures it: about 40 ms a request)."""
    write_wl(db / "WLM" / "a.wl")
    armed: list[int] = []
    original = reactor.quick_ack
    monkeypatch.setattr(
        reactor, "quick_ack", lambda sock: (armed.append(sock.fileno()), original(sock))
    )
    server = start_server()
    query = Dataset()
    query.PatientID = ""
    for _ in range(2):
        assert [s for s, _ in find(server.port, query)] == [0xFF00, 0x0000]
    # every PDU read (A-ASSOCIATE-RQ, P-DATA, A-RELEASE-RQ) and every idle wait arms it
    assert len(armed) >= 6, armed
