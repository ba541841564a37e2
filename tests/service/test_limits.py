"""What one peer can hold (issue 10, network): slots, sockets, memory, work per query.

Loopback only: a second "host" is 127.0.0.2 (all of 127/8 is the loopback). Waits are bounded
loops on outcomes (a slot freed, a connection closed, a status received), never fixed sleeps.
"""

from __future__ import annotations

import io
import logging
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import StartServer, echo, find, load_tool, make_dataset, until, write_wl
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode

from wlmserver.config import Config
from wlmserver.matching.status import Status
from wlmserver.service.handlers import handle_find
from wlmserver.service.identifier import encoding_problem
from wlmserver.service.server import MODALITY_WORKLIST_FIND, VERIFICATION
from wlmserver.store.index import WorklistStore

OTHER_HOST = "127.0.0.2"
PENDING, SUCCESS = int(Status.PENDING), int(Status.SUCCESS)


def _connect(port: int, source: str = OTHER_HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_server(sock: socket.socket, seconds: float = 20.0) -> bool:
    """Whether the server closes the connection (EOF or reset) within the bound."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture
def served(db: Path) -> Path:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    return db


def test_partial_pdus_from_one_host_neither_lock_out_others_nor_stay(
    start_server: StartServer, served: Path, sockets: list[socket.socket]
) -> None:
    """Sockets that send part of a PDU and go silent held their slot forever; the whole
    server answered "Local Limit Exceeded" to everyone."""
    server = start_server(max_associations=5, max_associations_per_peer=2, acse_timeout=1.0)
    for _ in range(10):
        sock = _connect(server.port)
        sock.sendall(b"\x01\x00\x00\x00")  # four bytes of an A-ASSOCIATE-RQ header
        sockets.append(sock)
    assert echo(server.port) == SUCCESS  # another host is served
    # and the partial ones are dropped by the server (ACSE timeout; or at once, over the limit)
    assert all(_closed_by_server(sock) for sock in sockets)
    assert until(lambda: not server.ae.active_associations)


def test_a_stalled_pdu_after_association_is_dropped(
    start_server: StartServer, served: Path, sockets: list[socket.socket]
) -> None:
    leanfind = load_tool("leanfind")
    server = start_server(network_timeout=1.0)
    sock = _connect(server.port)
    sockets.append(sock)
    sock.sendall(leanfind.associate_rq("WLM", "STALL"))
    assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
    sock.sendall(struct.pack(">BBL", 0x04, 0, 100) + b"\x00" * 10)  # 10 of 100 bytes
    assert _closed_by_server(sock)
    assert until(lambda: not server.ae.active_associations)


def test_connections_closed_before_a_request_free_their_slot_at_once(
    start_server: StartServer, served: Path
) -> None:
    """A connect-and-close held its slot for the ACSE timeout (here 10 minutes)."""
    server = start_server(max_associations=5, acse_timeout=600.0)
    for _ in range(20):
        _connect(server.port).close()
    assert until(lambda: not server.ae.active_associations)
    assert echo(server.port) == SUCCESS


def test_a_peer_that_stops_reading_is_dropped(
    start_server: StartServer, db: Path, sockets: list[socket.socket]
) -> None:
    """The fast path wrote to a socket without a timeout: a client that stopped reading
    mid-answer held its slot and the answers' memory forever."""
    leanfind = load_tool("leanfind")
    write_wl(
        db / "WLM" / "many.wl",
        PatientComments="C" * 4000,
        sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(3000)],
    )
    server = start_server(network_timeout=1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sockets.append(sock)
    sock.sendall(leanfind.associate_rq("WLM", "NOREAD"))
    assert sock.recv(1) == b"\x02"
    query = Dataset()
    query.PatientComments = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    sock.sendall(leanfind.find_request(query))
    # 12 MB of answers, and the client reads none of them
    assert until(lambda: not server.ae.active_associations, 30.0)
    assert echo(server.port) == SUCCESS


def test_a_pdu_longer_than_allowed_is_refused_before_it_is_read(
    start_server: StartServer, served: Path, sockets: list[socket.socket], caplog: Any
) -> None:
    """A header claiming 0xFFFFFFF0 bytes made the server buffer whatever followed."""
    server = start_server()
    sock = _connect(server.port)
    sockets.append(sock)
    with caplog.at_level(logging.WARNING, logger="wlmserver"):
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        sock.settimeout(20)
        assert sock.recv(10)[:1] == b"\x07"  # A-ABORT, before any of the body was sent
        refused = False
        try:  # the server reads no further: the connection is gone long before 64 MiB
            for _ in range(64):
                sock.sendall(b"\0" * (1 << 20))
        except OSError:
            refused = True
        assert refused
    assert any("4294967280 bytes refused" in r.getMessage() for r in caplog.records)
    assert until(lambda: not server.ae.active_associations)


def test_a_p_data_pdu_over_the_announced_maximum_is_refused(
    start_server: StartServer, served: Path, sockets: list[socket.socket]
) -> None:
    leanfind = load_tool("leanfind")
    server = start_server(max_pdu=16384)
    sock = _connect(server.port)
    sockets.append(sock)
    sock.sendall(leanfind.associate_rq("WLM", "BIGPDU"))
    assert sock.recv(1) == b"\x02"
    sock.recv(65536)  # the rest of the A-ASSOCIATE-AC
    sock.sendall(struct.pack(">BBL", 0x04, 0, 16385))
    sock.settimeout(20)
    assert sock.recv(10)[:1] == b"\x07"
    assert _closed_by_server(sock)


def _associate(port: int, source: str, ae_title: str = "WLM") -> Any:
    ae = AE(ae_title="PEERTEST")
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", port, ae_title=ae_title, bind_address=(source, 0))


def test_one_host_cannot_take_every_association(
    start_server: StartServer, served: Path, caplog: Any
) -> None:
    server = start_server(max_associations=5, max_associations_per_peer=2)
    held = [_associate(server.port, OTHER_HOST) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="wlmserver"):
            third = _associate(server.port, OTHER_HOST)
        assert third.is_rejected
        rejection = third.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
        (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert "local limit exceeded" in line and "--max-associations-per-peer" in line
        assert echo(server.port) == SUCCESS  # another host still gets in
    finally:
        for assoc in held:
            assoc.release()


def test_the_global_limit_counts_associations_not_waiting_sockets(
    start_server: StartServer, served: Path, sockets: list[socket.socket]
) -> None:
    server = start_server(max_associations=2, max_associations_per_peer=10)
    for _ in range(5):  # silent, connected: no association yet
        sockets.append(_connect(server.port))
    held = [_associate(server.port, "127.0.0.3") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        over = _associate(server.port, "127.0.0.1")
        assert over.is_rejected  # two associations: the limit
    finally:
        for assoc in held:
            assoc.release()
    assert echo(server.port) == SUCCESS


def test_one_log_line_per_association(start_server: StartServer, served: Path, caplog: Any) -> None:
    server = start_server()
    query = Dataset()
    query.PatientID = ""
    with caplog.at_level(logging.INFO, logger="wlmserver"):
        find(server.port, query)
        assert until(
            lambda: any(r.getMessage().startswith("association TESTSCU") for r in caplog.records)
        )
    (record,) = [r for r in caplog.records if r.getMessage().startswith("association ")]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["calling_aet"] == "TESTSCU" and fields["called_aet"] == "WLM"
    assert fields["ended"] == "released" and fields["queries"] == 1
    (query,) = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "query"]
    assert query.fields["status"] == "0x0000" and query.fields["answers"] == 1  # type: ignore[attr-defined]


# --- query limits -----------------------------------------------------------------------


def _failure(results: list[tuple[int, Dataset | None]]) -> tuple[int, str]:
    ((status, ds),) = results
    assert ds is not None
    return status, str(ds.ErrorComment)


def test_identifier_over_the_size_limit(start_server: StartServer, served: Path) -> None:
    server = start_server(max_identifier_size=1024)
    query = Dataset()
    query.PatientComments = "x" * 2000
    status, comment = _failure(find(server.port, query))
    assert status == int(Status.UNABLE_TO_PROCESS)
    assert "1024 bytes" in comment and len(comment) <= 64


def test_value_over_the_length_limit(start_server: StartServer, served: Path) -> None:
    """A 4 MiB wildcard value took 46 s of CPU and 2 GB."""
    server = start_server(max_value_length=100)
    query = Dataset()
    query.PatientName = "*A" * 100
    status, comment = _failure(find(server.port, query))
    assert status == int(Status.UNABLE_TO_PROCESS)
    assert comment == "PatientName: longer than 100 characters"
    query.PatientName = "*"
    assert find(server.port, query)[-1][0] == SUCCESS


def test_max_answers_ends_with_out_of_resources(start_server: StartServer, db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(5)])
    server = start_server(max_answers=3)
    query = Dataset()
    query.ScheduledProcedureStepSequence = [Dataset()]
    results = find(server.port, query)
    assert [s for s, _ in results] == [PENDING] * 3 + [int(Status.OUT_OF_RESOURCES)]
    final = results[-1][1]
    assert final is not None and "--max-answers" in final.ErrorComment
    assert [s for s, _ in find(server.port, query)].count(PENDING) == 3


# --- identifiers that do not decode -----------------------------------------------------


class _Event:
    """A stand-in C-FIND event carrying the identifier's bytes as pynetdicom does."""

    def __init__(self, data: bytes) -> None:
        requestor = SimpleNamespace(
            primitive=SimpleNamespace(called_ae_title="WLM", calling_ae_title="SCU"),
            ae_title="SCU",
            address="127.0.0.1",
            port=1,
        )
        self.assoc = SimpleNamespace(requestor=requestor)
        self.request = SimpleNamespace(Identifier=io.BytesIO(data))
        self.context = SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian)
        self.is_cancelled = False

    @property
    def identifier(self) -> Dataset:
        return decode(io.BytesIO(self.request.Identifier.getvalue()), False, True)


def _encoded(**values: Any) -> bytes:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.Modality = "CT"
    ds.ScheduledProcedureStepSequence = [item]
    data = encode(ds, False, True)
    assert data is not None
    return bytes(data)


def _status_of(db: Path, data: bytes) -> Dataset:
    write_wl(db / "WLM" / "a.wl", PatientID="P1")
    store = WorklistStore(db)
    store.scan()
    ((status, _),) = list(handle_find(_Event(data), store, Config(db)))  # type: ignore[arg-type]
    assert isinstance(status, Dataset)
    return status


@pytest.mark.parametrize(
    ("name", "mangle", "problem"),
    [
        ("cut short", lambda b: b[:-1], "past the end"),
        ("length past the end", lambda b: b[:6] + b"\xff\x00" + b[8:], "past the end"),
        ("random bytes", lambda b: bytes(range(7, 250, 3)), "undecodable identifier"),
    ],
)
def test_undecodable_identifiers_fail(
    db: Path, name: str, mangle: Callable[[bytes], bytes], problem: str
) -> None:
    """They got Success with no answers: pydicom reads what is there, leniently."""
    data = mangle(_encoded(PatientID="P1"))
    status = _status_of(db, data)
    assert status.Status == Status.UNABLE_TO_PROCESS, name
    assert problem in status.ErrorComment and len(status.ErrorComment) <= 64


def test_text_not_valid_in_its_character_set_fails(db: Path) -> None:
    data = _encoded(SpecificCharacterSet="ISO_IR 192", PatientName="M*")
    data = data.replace(b"M*", b"\xfc*")  # Latin-1 bytes in a UTF-8 identifier
    status = _status_of(db, data)
    assert status.Status == Status.UNABLE_TO_PROCESS
    assert status.ErrorComment == "PatientName: not valid in the Specific Character Set"


@pytest.mark.parametrize(
    ("charset", "value"),
    [
        # ESC $ Z is no escape sequence of ISO 2022 IR 87 (nor of any other character set)
        ("\\ISO 2022 IR 87", b"\x1b$Z0!\x1b(B*"),
        ("ISO 2022 IR 100", b"\x1b-Z\xe9*"),
    ],
)
def test_an_unknown_iso_2022_escape_sequence_fails(db: Path, charset: str, value: bytes) -> None:
    """It got Success with 0 matches and no warning: pydicom decodes an escape sequence it
    does not know as the characters themselves (issue 20, finding 8)."""
    value += b" " * (len(value) % 2)
    placeholder = "Q" * len(value)  # the same length: the element's length stays right
    data = _encoded(SpecificCharacterSet=charset, PatientName=placeholder)
    data = data.replace(placeholder.encode(), value)
    status = _status_of(db, data)
    assert status.Status == Status.UNABLE_TO_PROCESS
    assert status.ErrorComment == "PatientName: escape sequence not of its Specific Character Set"
    assert status.OffendingElement == 0x00100010


def test_a_known_iso_2022_escape_sequence_is_matched(db: Path) -> None:
    write_wl(
        db / "WLM" / "jp.wl",
        make_dataset(SpecificCharacterSet="\\ISO 2022 IR 87", PatientName="Yamada^Tarou=山田^太郎"),
    )
    data = _encoded(SpecificCharacterSet="\\ISO 2022 IR 87", PatientName="*=山田*")
    store = WorklistStore(db)
    store.scan()
    statuses = [s for s, _ in handle_find(_Event(data), store, Config(db))]  # type: ignore[arg-type]
    assert [int(s) if isinstance(s, int) else int(s.Status) for s in statuses] == [PENDING, SUCCESS]


def test_encoding_problem_accepts_what_pydicom_writes() -> None:
    ds = Dataset()
    ds.PatientName = "A*"
    item = Dataset()
    item.Modality = "CT"
    inner = Dataset()
    inner.CodeValue = "X"
    item.ScheduledProtocolCodeSequence = [inner]
    ds.ScheduledProcedureStepSequence = [item]
    for implicit, little in [(False, True), (True, True), (False, False)]:
        data = encode(ds, implicit, little)
        assert data is not None and encoding_problem(bytes(data), implicit, little) is None
    undefined = (
        bytes.fromhex("40000001") + b"SQ" + bytes(2) + b"\xff" * 4
        + bytes.fromhex("feff00e0ffffffff") + bytes.fromhex("08006000") + b"CS\x02\x00CT"
        + bytes.fromhex("feff0de000000000") + bytes.fromhex("feffdde000000000")
    )  # fmt: skip
    assert encoding_problem(undefined, False, True) is None
    assert encoding_problem(undefined[:-8], False, True) == "a sequence has no end"


def test_the_options_are_on_the_command_line(db: Path) -> None:
    from wlmserver.config.loader import config_from_args
    from wlmserver.config.options import build_parser

    args = [
        "-dfp",
        str(db),
        "--max-associations-per-peer",
        "3",
        "--max-identifier-size",
        "2048",
        "--max-value-length",
        "200",
        "--max-answers",
        "500",
        "--log-json",
    ]
    config = config_from_args(build_parser().parse_args(args))
    assert config.max_associations_per_peer == 3
    assert (config.max_identifier_size, config.max_value_length) == (2048, 200)
    assert config.max_answers == 500 and config.log_json
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.max_associations_per_peer == 10 and defaults.max_answers == 0


def test_mwl_find_is_what_the_limits_protect() -> None:
    assert MODALITY_WORKLIST_FIND == "1.2.840.10008.5.1.4.31"


def test_a_released_association_frees_its_slot_before_its_thread_ends(
    start_server: StartServer, served: Path
) -> None:
    """A peer at its limit that releases and asks again at once (a modality's next query, a
    client pool) is admitted, even while the released association's thread is still busy
    closing (here: held in a handler of the release); the benchmark's 8 lean clients were
    refused now and then."""
    import threading

    from pynetdicom import evt

    server = start_server(max_associations=5, max_associations_per_peer=1)
    closing = threading.Event()
    holding = threading.Event()

    def slow_close(event: Any) -> None:
        holding.set()
        closing.wait(20)  # the released association's thread stays alive meanwhile

    server._server.bind(evt.EVT_RELEASED, slow_close)
    try:
        first = _associate(server.port, OTHER_HOST)
        assert first.is_established
        first.release()
        assert holding.wait(20)
        again = _associate(server.port, OTHER_HOST)
        try:
            assert again.is_established
        finally:
            again.release()
    finally:
        closing.set()
