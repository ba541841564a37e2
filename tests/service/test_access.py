"""Who may ask: calling AE title and address allow-lists, end to end with DCMTK and pynetdicom."""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import struct
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest
from conftest import StartServer, find, make_dataset, until, write_wl
from pynetdicom import AE

from wlmserver import logs
from wlmserver.config.access import Access, AllowList, parse_network
from wlmserver.service.server import MODALITY_WORKLIST_FIND

ECHOSCU = Path("/usr/bin/echoscu")
needs_echoscu = pytest.mark.skipif(not ECHOSCU.exists(), reason="DCMTK echoscu not installed")


def _echoscu(port: int, calling: str, called: str = "WLM") -> str:
    result = subprocess.run(
        [str(ECHOSCU), "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout + result.stderr + f"\nexit {result.returncode}"


def _rejection(port: int, calling: str, called: str = "WLM") -> tuple[int, int, int] | None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return (int(rj.result), int(rj.result_source), int(rj.diagnostic))


def _lists(
    titles: tuple[str, ...] | None = None, hosts: tuple[str, ...] | None = None
) -> AllowList:
    return AllowList(titles, None if hosts is None else tuple(parse_network(h) for h in hosts))


@needs_echoscu
def test_a_calling_ae_title_off_the_list_is_rejected_with_its_reason(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(access=Access(_lists(("CT*", "MR01"))))
    caplog.set_level(logging.INFO, "wlmserver")
    assert "exit 0" in _echoscu(server.port, "CT07")
    assert "exit 0" in _echoscu(server.port, "MR01")
    refused = _echoscu(server.port, "US01")
    assert "Association Rejected" in refused, refused
    assert "Rejected Permanent, Source: Service User" in refused, refused
    assert "Reason: Calling AE Title Not Recognized" in refused, refused

    def rejected() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if "rejected" in r.getMessage() and r.levelno == logging.WARNING
        ]

    # the server logs after it sent the A-ASSOCIATE-RJ, which echoscu may see first
    assert until(rejected, 10), rejected()
    lines = rejected()
    assert len(lines) == 1, lines
    assert "US01" in lines[0] and "calling AE title not allowed" in lines[0]
    assert "exit 0" in _echoscu(server.port, "CT01")  # and it keeps serving


def test_an_address_off_the_list_is_rejected(start_server: StartServer) -> None:
    closed = start_server(access=Access(_lists(hosts=("10.0.0.0/8", "::1"))))
    assert _rejection(closed.port, "CT01") == (1, 1, 1)  # no reason given
    opened = start_server(access=Access(_lists(hosts=("10.0.0.0/8", "127.0.0.0/24"))))
    assert _rejection(opened.port, "CT01") is None


def test_per_called_ae_title_lists_apply_in_addition(start_server: StartServer, db: Path) -> None:
    (db / "OTHER").mkdir()
    write_wl(db / "WLM" / "a.wl", make_dataset())
    called = MappingProxyType({"WLM": _lists(("CT01",))})
    server = start_server(access=Access(_lists(("CT*",)), called))
    assert _rejection(server.port, "CT01", "WLM") is None
    assert _rejection(server.port, "CT02", "WLM") == (1, 1, 3)
    assert _rejection(server.port, "CT02", "OTHER") is None
    assert _rejection(server.port, "MR01", "OTHER") == (1, 1, 3)


def test_a_refused_peer_learns_nothing_of_the_called_ae_titles(start_server: StartServer) -> None:
    server = start_server(access=Access(_lists(("CT01",))))
    # not "called AE title not recognized": the allow-list answers first
    assert _rejection(server.port, "MR01", "NOSUCHAE") == (1, 1, 3)
    assert _rejection(server.port, "CT01", "NOSUCHAE") == (1, 1, 7)


def test_an_allowed_peer_is_answered(start_server: StartServer, db: Path) -> None:
    write_wl(db / "WLM" / "a.wl", make_dataset())
    server = start_server(access=Access(_lists(("TESTSCU",), ("127.0.0.1",))))
    from pydicom import Dataset

    query = Dataset()
    query.PatientID = ""
    statuses = [s for s, _ in find(server.port, query)]
    assert statuses == [0xFF00, 0x0000]


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # a dual-stack socket's IPv4 peer
        ("10.2.0.1", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_addresses_are_matched_by_network(address: str, allowed: bool) -> None:
    lists = _lists(hosts=("10.1.0.0/16",))
    assert lists.refuses_address(address) is not allowed


def test_no_list_allows_everyone_and_an_empty_list_no_one() -> None:
    assert not AllowList().refuses_title("ANY") and not AllowList().refuses_address("1.2.3.4")
    assert AllowList(calling_ae_titles=()).refuses_title("ANY")
    assert AllowList(hosts=()).refuses_address("1.2.3.4")
    assert Access().is_open and not Access(AllowList(hosts=())).is_open
    assert parse_network("192.168.1.7") == ipaddress.ip_network("192.168.1.7/32")
    with pytest.raises(ValueError, match="host names are not looked up"):
        parse_network("pacs.example.org")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _flood_request(calling: str = "FLOOD", size: int = 65000) -> bytes:
    """An A-ASSOCIATE-RQ of ``size`` bytes: one presentation context with 2,400 transfer
    syntax items, each UID non-conformant and different (pynetdicom warns once per item)."""
    syntaxes = b""
    n = 0
    while len(syntaxes) < size - 200:
        syntaxes += _item(0x40, f"1.2.840.10008.1.2.0{n}".encode())
        n += 1
    context = bytes([1, 0, 0, 0]) + _item(0x30, MODALITY_WORKLIST_FIND.encode()) + syntaxes
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1.9")
    body = struct.pack(">HH", 1, 0) + b"WLM".ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context) + _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _answer(port: int, request: bytes) -> bytes:
    """The first PDU header and parameters the server answers ``request`` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        return sock.recv(10)


@pytest.mark.filterwarnings("ignore")  # pydicom warns per junk item
def test_a_refused_address_is_rejected_before_its_request_is_decoded(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten 64 KB requests from a host the allow-list refuses wrote 23,000 WARNING lines and
    took 3.5 s of CPU (pynetdicom decoding every item); now each costs one line (issue 20)."""
    server = start_server(access=Access(_lists(hosts=("10.0.0.0/8",))))
    caplog.set_level(logging.WARNING)
    request = _flood_request()
    assert len(request) > 64000
    for _ in range(10):
        assert _answer(server.port, request) == bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1])
    assert until(lambda: not server.ae.active_associations)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("wlmserver")]
    theirs = [r.getMessage() for r in caplog.records if not r.name.startswith("wlmserver")]
    assert not theirs, f"{len(theirs)} lines from decoding, first: {theirs[:1]}"
    assert len(ours) == 10 and all("address not allowed" in m for m in ours), ours[:3]
    assert _rejection(server.port, "CT01") == (1, 1, 1)  # and pynetdicom peers see the same


@pytest.mark.filterwarnings("ignore")  # pydicom warns per junk item
def test_a_refused_calling_ae_title_is_rejected_from_the_request_bytes(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(access=Access(_lists(("CT*",))))
    caplog.set_level(logging.WARNING)
    assert _answer(server.port, _flood_request("MR01"))[7:] == bytes([1, 1, 3])
    assert not [r for r in caplog.records if not r.name.startswith("wlmserver")]
    assert _rejection(server.port, "CT01") is None  # an allowed title is decoded and served


@pytest.mark.filterwarnings("ignore")  # pydicom warns per junk item
def test_repeated_warnings_of_an_allowed_peer_are_rate_limited(
    start_server: StartServer, db: Path
) -> None:
    """pynetdicom formats each warning with its value (an f-string): every line was a kind of
    its own, and the rate limit let all 2,400 of one request through."""
    server = start_server()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler)  # as the command line's handler: burst 20 a minute
    peer_logger = logging.getLogger("pynetdicom")
    peer_logger.addHandler(handler)
    try:
        _answer(server.port, _flood_request())
        assert until(lambda: not server.ae.active_associations)
    finally:
        peer_logger.removeHandler(handler)
    # 9,772 lines before (four warnings per item), now a burst of 20 of each of the four kinds
    lines = stream.getvalue().splitlines()
    assert 0 < len(lines) <= 4 * 20, f"{len(lines)} lines, first: {lines[:2]}"
