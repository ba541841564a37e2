"""wlmscpfs's remaining network options: --refuse, --reject, --sleep-*, the preferred transfer
syntaxes (+x=, +xe, +xb, +xd, +xi) and the deflate level (+cl).

Loopback only, free ports. Timing assertions are lower bounds only (a query with a sleep of S
seconds takes at least S); upper limits are generous bounds on joins, never on durations.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, echo, find, until, write_wl
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt

from wlmserver.matching.encoding import deflate
from wlmserver.matching.status import Status
from wlmserver.service.server import MODALITY_WORKLIST_FIND, VERIFICATION

FINDSCU = "/usr/bin/findscu"
ECHOSCU = "/usr/bin/echoscu"
needs_findscu = pytest.mark.skipif(not Path(FINDSCU).exists(), reason="DCMTK not installed")
needs_echoscu = pytest.mark.skipif(not Path(ECHOSCU).exists(), reason="DCMTK not installed")
PENDING, SUCCESS = int(Status.PENDING), int(Status.SUCCESS)

#: A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-permanent (1), service-user (1), no-reason-given (1)
REJECT_NO_REASON = bytes([0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x01, 0x01])


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    write_wl(db / "WLM" / "b.wl", PatientID="P2")
    return db


def _query() -> Dataset:
    query = Dataset()
    query.PatientID = ""
    query.PatientName = ""
    return query


# -- --refuse and --reject


def _associate_rq(implementation_uid: str | None) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification, with the Implementation Class
    UID sub-item (PS3.8 9.3.2.3.3) or, against the standard, without it."""

    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    context = bytes([1, 0, 0, 0]) + item(0x30, VERIFICATION.encode())
    context += item(0x40, ExplicitVRLittleEndian.encode())
    user = item(0x51, struct.pack(">I", 16384))
    if implementation_uid is not None:
        user += item(0x52, implementation_uid.encode())
    body = struct.pack(">HH", 1, 0) + b"WLM".ljust(16) + b"RAWSCU".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1") + item(0x20, context) + item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _answer_to(port: int, pdu: bytes) -> bytes:
    """The PDU the server answers an A-ASSOCIATE-RQ with (header and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(pdu)
        data = b""
        while len(data) < 6 or len(data) < 6 + struct.unpack_from(">I", data, 2)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _association_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_refuse_rejects_every_association_as_wlmscpfs(
    start_server: StartServer, served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(refuse_associations=True)
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        assert _answer_to(server.port, _associate_rq("1.2.3.4")) == REJECT_NO_REASON
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
        assert assoc.is_rejected and not assoc.is_established
        # one line per association, when it ends (in its own thread)
        assert until(lambda: len(_association_lines(caplog, "--refuse")) == 2)
    (line,) = [line for line in _association_lines(caplog, "--refuse") if "RAWSCU" in line]
    assert "RAWSCU -> WLM" in line and "rejected: every association is refused" in line


@needs_echoscu
def test_refuse_as_echoscu_sees_it(start_server: StartServer, served: Path) -> None:
    server = start_server(refuse_associations=True)
    result = subprocess.run(
        [ECHOSCU, "-aec", "WLM", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Rejected Permanent, Source: Service User" in result.stderr
    assert "No Reason" in result.stderr


def test_reject_refuses_a_request_without_implementation_class_uid(
    start_server: StartServer, served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = start_server()
    assert _answer_to(plain.port, _associate_rq(None))[0] == 0x02  # accepted without --reject
    server = start_server(reject_without_implementation_uid=True)
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        assert _answer_to(server.port, _associate_rq(None)) == REJECT_NO_REASON
        assert _answer_to(server.port, _associate_rq("")) == REJECT_NO_REASON  # empty sub-item
        assert until(lambda: len(_association_lines(caplog, "--reject")) == 2)
    assert "no Implementation Class UID" in _association_lines(caplog, "--reject")[0]
    assert _answer_to(server.port, _associate_rq("1.2.3.4"))[0] == 0x02  # A-ASSOCIATE-AC
    assert echo(server.port) == SUCCESS  # pynetdicom sends its own UID


@needs_findscu
def test_reject_accepts_findscu(start_server: StartServer, served: Path) -> None:
    server = start_server(reject_without_implementation_uid=True)
    result = subprocess.run(
        [FINDSCU, "-W", "-aec", "WLM", "127.0.0.1", str(server.port), "-k", "PatientID"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Rejected" not in result.stderr


# -- --sleep-before, --sleep-during, --sleep-after


def test_sleep_before_delays_the_query(start_server: StartServer, served: Path) -> None:
    server = start_server(sleep_before_find=0.5)
    started = time.monotonic()
    responses = find(server.port, _query())
    assert time.monotonic() - started >= 0.5
    assert [s for s, _ in responses] == [PENDING, PENDING, SUCCESS]


def test_sleep_during_delays_every_response(start_server: StartServer, served: Path) -> None:
    server = start_server(sleep_during_find=0.25)
    started = time.monotonic()
    responses = find(server.port, _query())
    assert time.monotonic() - started >= 0.75  # before each of the 3 responses
    assert sorted(a.PatientID for s, a in responses if s == PENDING) == ["P1", "P2"]


def test_sleep_after_delays_what_follows_the_final_response(
    start_server: StartServer, served: Path
) -> None:
    """As wlmscpfs: the final response goes out, then the association's next message (here
    the A-RELEASE-RQ, then another C-FIND) waits."""
    # the sleep starts when the final response leaves; the client sees it a little later
    # (under load, tens of ms), so a 1 s sleep is checked with a 0.5 s lower bound
    server = start_server(sleep_after_find=1.0)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
    assert assoc.is_established
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND)]
    assert statuses == [PENDING, PENDING, SUCCESS]
    second_asked = time.monotonic()
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND)]
    assert statuses == [PENDING, PENDING, SUCCESS]
    assert time.monotonic() - second_asked >= 0.5  # the first query's sleep-after
    releasing = time.monotonic()
    assoc.release()
    assert time.monotonic() - releasing >= 0.5  # the second one's
    assert assoc.is_released


def test_a_sleeping_query_neither_blocks_others_nor_the_stop(
    start_server: StartServer, served: Path
) -> None:
    server = start_server(sleep_before_find=60.0)
    outcome: list[Any] = []

    def slow_query() -> None:
        try:
            outcome.append(find(server.port, _query()))
        except AssertionError as exc:  # the stop may end the association first
            outcome.append(exc)

    thread = threading.Thread(target=slow_query, name="slow-query", daemon=True)
    thread.start()
    assert until(lambda: len(server.ae.active_associations) == 1)
    assert echo(server.port) == SUCCESS  # another association, while that one sleeps
    assert thread.is_alive()
    server.stop()  # ends the sleep at once: the query finishes (or is aborted) now
    thread.join(timeout=20)
    assert not thread.is_alive(), "the 60 s sleep was not ended by the stop"


# -- preferred transfer syntaxes


PROPOSED = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
]


def _accepted(port: int, proposed: list[str]) -> tuple[Any, str | None]:
    """An association proposing ``proposed`` (in that order) in one MWL context; it and the
    transfer syntax accepted, or None."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND, proposed)
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    if not assoc.is_established:
        return assoc, None
    contexts = [c for c in assoc.accepted_contexts if c.abstract_syntax == MODALITY_WORKLIST_FIND]
    return assoc, (contexts[0].transfer_syntax[0] if contexts else None)


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        ("uncompr", ExplicitVRLittleEndian),  # this machine is little endian
        ("little", ExplicitVRLittleEndian),
        ("big", ExplicitVRBigEndian),
        ("deflated", DeflatedExplicitVRLittleEndian),
        ("implicit", ImplicitVRLittleEndian),
    ],
)
def test_the_preferred_transfer_syntax_is_accepted_and_answers(
    start_server: StartServer, served: Path, preference: str, expected: str
) -> None:
    server = start_server(transfer_syntax_preference=preference)
    assoc, accepted = _accepted(server.port, PROPOSED)
    try:
        assert accepted == expected
        answers = [
            a.PatientID
            for s, a in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND)
            if s is not None and s.Status == PENDING
        ]
        assert sorted(answers) == ["P1", "P2"]
    finally:
        assoc.release()


def test_without_the_preferred_syntax_the_next_one_is_taken(
    start_server: StartServer, served: Path
) -> None:
    server = start_server(transfer_syntax_preference="big")
    assoc, accepted = _accepted(server.port, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assoc.release()
    assert accepted == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("preference", "proposed"),
    [
        ("implicit", [ExplicitVRLittleEndian, ExplicitVRBigEndian]),  # +xi: implicit only
        ("uncompr", [DeflatedExplicitVRLittleEndian]),  # deflated only with +xd
    ],
)
def test_syntaxes_not_offered_are_refused(
    start_server: StartServer, served: Path, preference: str, proposed: list[str]
) -> None:
    server = start_server(transfer_syntax_preference=preference)
    assoc, accepted = _accepted(server.port, proposed)
    if assoc.is_established:
        assoc.release()
    assert accepted is None


_DCMTK_NAMES = {
    "uncompr": ("", "Little Endian Explicit"),
    "little": ("", "Little Endian Explicit"),
    "big": ("", "Big Endian Explicit"),
    "deflated": ("-xd", "Deflated Explicit VR Little Endian"),
    "implicit": ("", "Little Endian Implicit"),
}


@needs_findscu
@pytest.mark.parametrize("preference", list(_DCMTK_NAMES))
def test_findscu_with_each_preference(start_server: StartServer, db: Path, preference: str) -> None:
    """findscu proposes all uncompressed syntaxes (with -xd, deflated first): it gets the
    server's preferred one and every answer. Deflated answers of odd length were not padded,
    and findscu failed on the first one ("DIMSE: Odd Fragment Length"): the names vary in
    length so that some of these deflate to an odd length."""
    for n in range(12):
        name = f"MÜLLER^{'J' * n}" if n % 2 else f"DOE^{'J' * n}"
        charset = "ISO_IR 192" if n % 2 else None
        path = db / "WLM" / f"{n}.wl"
        write_wl(path, PatientID=f"P{n}", PatientName=name, SpecificCharacterSet=charset)
    server = start_server(transfer_syntax_preference=preference)
    option, name = _DCMTK_NAMES[preference]
    args = ["-v", "-W", "-aec", "WLM", "127.0.0.1", str(server.port), "-k", "PatientName"]
    result = subprocess.run(
        [FINDSCU, *([option] if option else []), *args, "-k", "PatientID"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count("(Pending)") == 12 and "Final Find Response (Success)" in out, out
    assert f"Used TransferSyntax: {name}" in out
    assert "MÜLLER^JJJ" in out


# -- deflated identifiers and answers


def test_deflated_answers_are_padded_to_even_length() -> None:
    """PS3.5 A.5; PS3.8 E.2 (even fragments). Raw deflate output of these is odd."""
    for size in range(1, 40):
        data = bytes(range(size)) * 2
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        odd = len(raw.compress(data) + raw.flush()) % 2
        packed = deflate(data)
        assert len(packed) % 2 == 0 and len(packed) >= 1 + odd
        assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(packed) == data


@pytest.mark.filterwarnings("ignore:The value")  # pydicom: 200,000 characters in an LT
def test_a_deflated_identifier_is_bounded_when_inflated(
    start_server: StartServer, served: Path
) -> None:
    """200 KB of one letter deflates to a few hundred bytes: the identifier is refused when
    inflating passes --max-identifier-size, not inflated whole first."""
    server = start_server(transfer_syntax_preference="deflated")
    query = _query()
    query.PatientComments = "A" * 200_000
    ((status, detail),) = find(server.port, query, transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert status == int(Status.UNABLE_TO_PROCESS)
    assert detail is not None and "inflated" in str(detail.ErrorComment)


def _deflated_answer_bytes(port: int) -> bytes:
    """Everything received over an association that queries with deflate."""
    received: list[bytes] = []
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [DeflatedExplicitVRLittleEndian])
    handlers = [(evt.EVT_DATA_RECV, lambda event: received.append(bytes(event.data)))]
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM", evt_handlers=handlers)
    assert assoc.is_established
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(_query(), MODALITY_WORKLIST_FIND)]
    finally:
        assoc.release()
    assert statuses == [PENDING, SUCCESS]
    return b"".join(received)


def test_compression_level(start_server: StartServer, db: Path) -> None:
    """+cl 0 stores the answer uncompressed (its text is in the PDUs as it is); the default
    level compresses it."""
    write_wl(db / "WLM" / "a.wl", PatientID="P1", PatientName="QQQQQQQQQQQQQQQQ^QQQQQQQQ")
    stored = start_server(transfer_syntax_preference="deflated", compression_level=0)
    assert b"QQQQQQQQQQQQQQQQ^QQQQQQQQ" in _deflated_answer_bytes(stored.port)
    compressed = start_server(transfer_syntax_preference="deflated")
    assert b"QQQQQQQQQQQQQQQQ^QQQQQQQQ" not in _deflated_answer_bytes(compressed.port)
