"""Fuzzing a real server: fuzzed C-FIND identifiers and raw PDU conversations (truncated,
wrong lengths, huge length claims, garbage, abrupt close mid-PDU, A-ABORT mid-stream), then a
known query must still answer exactly; silent and stalled peers are dropped by the server's
timeouts while others are served (strategies: tools/fuzzing.py)."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

import pytest
from conftest import load_tool

pytestmark = pytest.mark.filterwarnings("ignore")

fuzzing = load_tool("fuzzing")


def test_fuzzed_finds_and_pdus_leave_the_server_serving() -> None:
    tally: Counter[str] = Counter()
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        fuzzing.run_target("find", 150, tally, fuzz=fuzz)
        fuzzing.run_target("raw_pdus", 200, tally, fuzz=fuzz)
        assert fuzz.settle(30) == 0, "associations still open after the fuzz cases"
        fuzz.check_healthy()  # the known queries answer exactly; no traceback logged
    assert fuzzing.cases(tally, "find") == 150 and fuzzing.cases(tally, "raw_pdus") == 200
    assert tally["find: status 0x0000"] and tally["find: status 0xA900"]


STALLS = {
    "says nothing": b"",
    "half a PDU header": b"\x01\x00\x00",
    "a huge length claim, then nothing": struct.pack(">BBI", 0x04, 0, 0x7FFFFFF0) + b"x" * 10,
    "half an association request": fuzzing.ASSOCIATE_RQ[:50],
    "an association, then nothing": fuzzing.ASSOCIATE_RQ,
}


def test_stalled_peers_are_dropped_and_others_served_meanwhile() -> None:
    timeout = 2.0
    with fuzzing.fuzz_server(
        echo_thread_errors=False,
        acse_timeout=timeout,
        network_timeout=timeout,
        dimse_timeout=timeout,
    ) as fuzz:
        peers = []
        for data in STALLS.values():
            sock = socket.create_connection(("127.0.0.1", fuzz.port), timeout=timeout * 5)
            sock.sendall(data)
            peers.append(sock)
        started = time.monotonic()
        # served while the stalled peers hold their connections
        assert fuzzing.raw_find(fuzz.port, fuzzing.identifier_of("universal")) == ("status", 0, 2)
        dropped = {}
        for name, sock in zip(STALLS, peers, strict=True):
            with sock:
                try:
                    while sock.recv(65536):  # an A-ABORT or A-ASSOCIATE-AC, then the close
                        pass
                    dropped[name] = time.monotonic() - started
                except OSError as exc:
                    dropped[name] = float("inf") if isinstance(exc, TimeoutError) else 0.0
        late = {name: s for name, s in dropped.items() if s > timeout * 3}
        assert not late, f"not dropped within {timeout * 3:.0f} s: {late}"
        assert fuzz.settle(10) == 0
        fuzz.check_healthy()


def test_two_association_requests_back_to_back() -> None:
    """Found by fuzzing, now fixed: two A-ASSOCIATE-RQs back to back: pynetdicom's DUL thread
    (wrapped by reactor.run_reactor_closing) dies with InvalidEventError Evt7 in Sta13, an
    uncaught thread exception whose traceback goes to stderr, around the log's filters."""
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
                sock.sendall(fuzzing.ASSOCIATE_RQ + fuzzing.ASSOCIATE_RQ)
                sock.recv(65536)
        assert fuzz.settle(10) == 0
        time.sleep(0.5)
        assert not fuzz.thread_errors, f"{len(fuzz.thread_errors)}: {fuzz.thread_errors[0]}"


def test_a_data_set_without_a_command_is_aborted_without_a_traceback() -> None:
    """Found by fuzzing, now fixed: a P-DATA-TF with a data set fragment and no command: the
    association is aborted (rightly), but pynetdicom.dimse logs 'Received an invalid DIMSE
    message' and a KeyError traceback ('DIMSEMessag') at ERROR, a multi-line record a peer can
    provoke at will."""
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
            sock.sendall(fuzzing.ASSOCIATE_RQ)
            assert sock.recv(65536)[:1] == b"\x02"
            pdv = struct.pack(">IBB", 6, 1, 0x02) + bytes(4)  # the last data set fragment
            sock.sendall(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
            assert sock.recv(65536)[:1] == b"\x07"  # A-ABORT
        assert fuzz.settle(10) == 0
        assert fuzzing.raw_find(fuzz.port, fuzzing.identifier_of("universal")) == ("status", 0, 2)
        tracebacks = [r for r in fuzz.collector.records if r.exc_info]
        assert not tracebacks, f"{tracebacks[0].name}: {tracebacks[0].getMessage()}"


def _p_data(header: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, 1, header) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def test_a_command_without_command_field_is_aborted_without_a_traceback() -> None:
    """Found by fuzzing, now fixed: a command set without CommandField: pynetdicom.fsm logs an
    AttributeError traceback and the DUL thread dies of it (uncaught in
    reactor.run_reactor_closing); the connection is closed without an A-ABORT."""
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
            sock.sendall(fuzzing.ASSOCIATE_RQ)
            assert sock.recv(65536)[:1] == b"\x02"
            message_id_only = struct.pack("<HHI", 0, 0x0110, 2) + b"\x01\x00"
            sock.sendall(_p_data(0x03, message_id_only))
            reply = sock.recv(65536)
        assert fuzz.settle(10) == 0
        time.sleep(0.3)
        assert not fuzz.thread_errors, fuzz.thread_errors[0]
        tracebacks = [r for r in fuzz.collector.records if r.exc_info]
        assert not tracebacks, f"{tracebacks[0].name}: {tracebacks[0].getMessage()}"
        assert reply[:1] == b"\x07"


def test_a_non_ascii_uid_in_an_association_request_is_refused_without_a_traceback() -> None:
    """Found by fuzzing, now fixed: a non-ASCII byte in a UID of an A-ASSOCIATE-RQ:
    pynetdicom.utils logs a UnicodeDecodeError traceback at ERROR before the association is
    aborted."""
    request = fuzzing.ASSOCIATE_RQ.replace(b"1.2.840.10008.5.1.4.31", b"\xb1.2.840.10008.5.1.4.31")
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
            sock.sendall(request)
            sock.recv(65536)
        assert fuzz.settle(10) == 0
        assert fuzzing.raw_find(fuzz.port, fuzzing.identifier_of("universal")) == ("status", 0, 2)
        tracebacks = [r for r in fuzz.collector.records if r.exc_info]
        assert not tracebacks, f"{tracebacks[0].name}: {tracebacks[0].getMessage()}"


def test_a_command_field_with_two_values_is_aborted_without_a_traceback() -> None:
    """Found by fuzzing, now fixed: a command set whose CommandField holds two values:
    pynetdicom looks the list up in its message types, and the DUL thread dies of TypeError
    (unhashable type: 'list'), uncaught, traceback logged by pynetdicom.fsm; the connection
    closes without an A-ABORT."""

    def element(number: int, raw: bytes) -> bytes:
        return struct.pack("<HHI", 0, number, len(raw)) + raw

    command = element(0x0002, b"1.2.840.10008.5.1.4.31\x00")
    command += element(0x0100, struct.pack("<HH", 0x0020, 0x0020))  # C-FIND-RQ, twice
    command += element(0x0110, b"\x01\x00") + element(0x0800, b"\x01\x01")
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
            sock.sendall(fuzzing.ASSOCIATE_RQ)
            assert sock.recv(65536)[:1] == b"\x02"
            sock.sendall(_p_data(0x03, command))
            reply = sock.recv(65536)
        assert fuzz.settle(10) == 0
        time.sleep(0.3)
        assert not fuzz.thread_errors, fuzz.thread_errors[0]
        assert reply[:1] == b"\x07"


def test_an_abort_with_an_invalid_source_ends_the_association_quietly() -> None:
    """Found by fuzzing, now fixed: an A-ABORT whose source byte is not 0, 1 or 2: pynetdicom
    raises ValueError (Invalid A-ABORT 'Source' value) while decoding it and the DUL thread
    dies of it, uncaught."""
    with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
        with socket.create_connection(("127.0.0.1", fuzz.port), timeout=10) as sock:
            sock.sendall(fuzzing.ASSOCIATE_RQ)
            assert sock.recv(65536)[:1] == b"\x02"
            sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0xE3, 0))
            time.sleep(0.5)
        assert fuzz.settle(10) == 0
        assert fuzzing.raw_find(fuzz.port, fuzzing.identifier_of("universal")) == ("status", 0, 2)
        assert not fuzz.thread_errors, fuzz.thread_errors[0]
