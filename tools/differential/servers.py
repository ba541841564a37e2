"""Both servers as subprocesses, the client sending the same PDUs to each, and
the parser of the identifiers they answer with."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import leanfind
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import keyword_for_tag
from pydicom.valuerep import PersonName

from . import AE_TITLE, PENDING, SCS_TAG, TIMEOUT, WLMSCPFS
from .answers import Response, Tree, strip_padding
from .intended import SINGLE_VALUED_TEXT_VRS, TEXT_VRS
from .queries import Query, identifier


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """A server did not start or did not answer."""


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"exited with {process.returncode}: {log.read_text(errors='replace')}"
            )
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ServerError(f"not listening on port {port} after {TIMEOUT} s")
        time.sleep(0.02)


@contextmanager
def server(name: str, command: list[str], port: int, log: Path) -> Iterator[int]:
    """Run a server process listening on ``port``; always stopped afterwards. DCMTK sets
    TCP_NODELAY when the environment says so (else each answer waits for a delayed ACK)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            _wait_listening(process, port, log)
        except ServerError as exc:
            raise ServerError(f"{name}: {exc}") from None
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wlmscpfs_command(root: Path, port: int, wlmscpfs: Path = WLMSCPFS) -> list[str]:
    """DCMTK's wlmscpfs: one process (so stopping it leaves no children), answers labelled
    with the file's character set (``-csk``) so they can be decoded. It cannot be bound to an
    address: it listens on all interfaces, on a free port, and is only ever called on
    127.0.0.1."""
    return [str(wlmscpfs), "-s", "-dhl", "-csk", "-dfp", str(root), str(port)]


def wlmserver_command(root: Path, port: int) -> list[str]:
    """wlmserver from this checkout, on loopback, without periodic rescans."""
    return [
        sys.executable,
        "-m",
        "wlmserver",
        "-q",
        "-dfp",
        str(root),
        "--bind",
        "127.0.0.1",
        "--rescan-interval",
        "0",
        str(port),
    ]


class Client:
    """A lean worklist client over one raw socket and one association, reused for every query.

    The request PDUs are built by ``tools/leanfind.py`` (command set in Implicit VR Little
    Endian, identifier in Explicit VR Little Endian, the only transfer syntax proposed), once
    per query, so both servers receive the same bytes. Answers are parsed by
    :func:`parse_identifier`: decoding them with pynetdicom and pydicom costs a millisecond
    each, which a few hundred queries with many answers cannot afford.
    """

    def __init__(self, port: int, aet: str = AE_TITLE) -> None:
        self.port, self.aet = port, aet
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            return self.sock
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, bytearray()
        sock.sendall(leanfind.associate_rq(self.aet, "DIFFTEST"))
        pdu_type, _ = self._pdu()
        if pdu_type != 0x02:
            self.close()
            raise ServerError(f"association with port {self.port} ({self.aet}) not accepted")
        return sock

    def _pdu(self) -> tuple[int, bytes]:
        assert self.sock is not None
        while True:
            if len(self.buffer) >= 6:
                pdu_type, _, length = struct.unpack_from(">BBI", self.buffer)
                if len(self.buffer) >= 6 + length:
                    body = bytes(self.buffer[6 : 6 + length])
                    del self.buffer[: 6 + length]
                    return pdu_type, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServerError("the server closed the connection")
            self.buffer += chunk

    def find(self, query: Query, request: bytes | None = None) -> Response:
        """Send one query (its PDUs, if already built) and receive every response."""
        if request is None:
            request = find_request(query)
        response = Response(None)
        try:
            self._connect().sendall(request)
            command, data = bytearray(), bytearray()
            status, has_data = -1, False
            while response.status is None:
                pdu_type, body = self._pdu()
                if pdu_type != 0x04:
                    raise ServerError(f"PDU type 0x{pdu_type:02X} instead of P-DATA")
                offset = 0
                while offset < len(body):
                    (length,) = struct.unpack_from(">I", body, offset)
                    header = body[offset + 5]
                    fragment = body[offset + 6 : offset + 4 + length]
                    offset += 4 + length
                    if header & 0x01:  # a command fragment
                        command += fragment
                        if header & 0x02:
                            status, has_data = leanfind.command_status(bytes(command))
                            command.clear()
                            if status not in PENDING and not has_data:
                                response.status = status
                        continue
                    data += fragment
                    if header & 0x02:
                        if status in PENDING:
                            tree, label = parse_identifier(bytes(data))
                            response.answers.append(tree)
                            response.labels.append(label)
                        else:
                            response.status = status
                        data.clear()
        except (OSError, ServerError, ValueError, struct.error) as exc:
            response.status = None
            response.error = f"; {type(exc).__name__}: {exc}"
            self.close()
        return response

    def close(self) -> None:
        """Release the association (if any) and close the socket."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(leanfind.RELEASE_RQ)
            self._pdu()
        except (OSError, ServerError, struct.error):
            pass
        finally:
            self.sock.close()
            self.sock = None


def find_request(query: Query) -> bytes:
    """The C-FIND-RQ PDUs of a query (message ID: the query's number)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return leanfind.find_request(identifier(query.keys), query.number % 0xFFFF + 1)


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_UNDEFINED = 0xFFFFFFFF
TEXT_DELIMITERS = {0x09, 0x0A, 0x0C, 0x0D}  # where ISO 2022 returns to G0 in text (as pydicom)


@lru_cache(maxsize=4096)
def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


#: Multi-byte character sets that only exist as code extensions (PS3.3 C.12.1.1.2, Table
#: C.12-4): never value 1 of Specific Character Set (an empty value 1 stands for ISO IR 6).
CODE_EXTENSIONS_ONLY = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)


def label_problem(label: tuple[str, ...]) -> str:
    """What is wrong with an answer's Specific Character Set, or ``""``."""
    if label and label[0] in CODE_EXTENSIONS_ONLY:
        joined = "\\".join(label)
        return (
            f"answer labelled Specific Character Set {joined!r}: value 1 is missing "
            f"({label[0]} is a code extension, so it needs an empty value 1 or ISO 2022 IR 6 "
            "before it); decoders misread the text"
        )
    return ""


def parse_identifier(data: bytes) -> tuple[Tree, tuple[str, ...]]:
    """An Explicit VR Little Endian identifier as an answer tree, and its Specific Character
    Set; text decoded in that character set (as pydicom decodes it), padding stripped."""
    state: dict[str, Any] = {"encodings": convert_encodings(None), "label": ()}
    tree, _ = _parse_items(data, 0, len(data), state)
    return tree, state["label"]


def _parse_items(data: bytes, offset: int, end: int, state: dict[str, Any]) -> tuple[Tree, int]:
    tree: Tree = {}
    while offset < end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group == 0xFFFE:  # the end of an item of undefined length
            return tree, offset + 8
        vr = data[offset + 4 : offset + 6].decode("ascii")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        tag = group << 16 | element
        if vr == "SQ":
            tree[_name(tag)], offset = _parse_sequence(data, offset, length, state)
            continue
        raw = data[offset : offset + length]
        offset += length
        if tag == SCS_TAG:
            names = [v.strip() for v in raw.decode("ascii").split("\\")]
            state["label"] = tuple(names) if any(names) else ()
            # decoded as meant even when mislabelled (the label is checked by label_problem)
            repaired = ["", *names] if label_problem(tuple(names)) else names
            state["encodings"] = convert_encodings(repaired)
            continue
        tree[_name(tag)] = _decode(vr, raw, state["encodings"])
    return tree, offset


def _parse_sequence(
    data: bytes, offset: int, length: int, state: dict[str, Any]
) -> tuple[list[Tree], int]:
    end = len(data) if length == _UNDEFINED else offset + length
    items = []
    while offset < end:
        group, element, item_length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError(f"no item in a sequence at byte {offset - 8}")
        if item_length == _UNDEFINED:
            item, offset = _parse_items(data, offset, len(data), state)
        else:
            item, _ = _parse_items(data, offset, offset + item_length, state)
            offset += item_length
        items.append(item)
    return items, offset


def _decode(vr: str, raw: bytes, encodings: list[str]) -> tuple[str, ...]:
    if not raw:
        return ()
    if vr in _BINARY:
        fmt = _BINARY[vr]
        count = len(raw) // struct.calcsize(fmt)
        return tuple(strip_padding(vr, str(v)) for v in struct.unpack(f"<{count}{fmt}", raw))
    if vr in TEXT_VRS:
        parts = [raw] if vr in SINGLE_VALUED_TEXT_VRS else raw.split(b"\\")
        if vr == "PN":
            texts = [str(PersonName(p, encodings)) for p in parts]
        else:
            texts = [decode_bytes(p, encodings, TEXT_DELIMITERS) for p in parts]
        return tuple(strip_padding(vr, t) for t in texts)
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return (raw.hex(),)
    return tuple(strip_padding(vr, t) for t in raw.decode("ascii", "replace").split("\\"))
