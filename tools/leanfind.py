"""A lean Modality Worklist C-FIND client over a raw socket, for load measurements.

A pynetdicom client spends more CPU decoding each answer than a server spends sending it, so
several pynetdicom clients on the server's machine measure the client, not the server. This
client builds its PDUs once (A-ASSOCIATE-RQ, the C-FIND-RQ message, A-RELEASE-RQ) and then per
query only sends them and reads the responses' PDU headers and command sets: a new
association per query, as modalities do, at a small fraction of a pynetdicom client's cost.

It speaks just enough of PS3.8 (upper layer) and PS3.7 (DIMSE) for that: one presentation
context (Modality Worklist FIND, Explicit VR Little Endian), fragments reassembled, the Status
(0000,0900) of every response read. Answers' identifiers are counted, not decoded.

Usage::

    python3 tools/leanfind.py PORT [--aet WLMSERVER] [--clients 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

MWL_FIND = "1.2.840.10008.5.1.4.31"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.99"
PENDING = (0xFF00, 0xFF01)
CONTEXT_ID = 1
MAX_PDU = 16384


class LeanError(RuntimeError):
    """The peer refused, aborted or sent something this client does not understand."""


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(called: str, calling: str) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing MWL FIND in Explicit VR LE."""
    context = struct.pack(">BBBB", CONTEXT_ID, 0, 0, 0)
    context += _item(0x30, _uid(MWL_FIND)) + _item(0x40, _uid(EXPLICIT_VR_LE))
    user = _item(0x51, struct.pack(">I", MAX_PDU)) + _item(0x52, _uid(IMPLEMENTATION_CLASS_UID))
    body = struct.pack(">HH", 1, 0)
    body += called.encode("ascii").ljust(16)[:16] + calling.encode("ascii").ljust(16)[:16]
    body += bytes(32)
    body += _item(0x10, _uid(APPLICATION_CONTEXT)) + _item(0x20, context) + _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _encode(ds: Dataset, implicit: bool) -> bytes:
    encoded = encode(ds, implicit, True)
    if encoded is None:
        raise LeanError("cannot encode the data set")
    return bytes(encoded)


def _pdv(payload: bytes, command: bool) -> bytes:
    header = 0x03 if command else 0x02  # last fragment; bit 0: command
    return struct.pack(">IBB", len(payload) + 2, CONTEXT_ID, header) + payload


def _p_data(pdv: bytes) -> bytes:
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def find_request(identifier: Dataset, message_id: int = 1) -> bytes:
    """The C-FIND-RQ command set and identifier as two P-DATA-TF PDUs (PS3.7 9.3.2.1)."""
    command = Dataset()
    command.AffectedSOPClassUID = MWL_FIND
    command.CommandField = 0x0020
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    body = _encode(command, implicit=True)
    group_length = struct.pack("<HHIL", 0, 0, 4, len(body))
    data = _encode(identifier, implicit=False)
    return _p_data(_pdv(group_length + body, True)) + _p_data(_pdv(data, False))


RELEASE_RQ = struct.pack(">BBII", 0x05, 0, 4, 0)


def _recv_exact(sock: socket.socket, size: int, buffer: bytearray) -> None:
    while len(buffer) < size:
        chunk = sock.recv(max(65536, size - len(buffer)))
        if not chunk:
            raise LeanError("the peer closed the connection")
        buffer += chunk


class _Reader:
    """Reads whole PDUs from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def pdu(self) -> tuple[int, bytes]:
        _recv_exact(self.sock, 6, self.buffer)
        pdu_type, _, length = struct.unpack_from(">BBI", self.buffer)
        _recv_exact(self.sock, 6 + length, self.buffer)
        body = bytes(self.buffer[6 : 6 + length])
        del self.buffer[: 6 + length]
        return pdu_type, body


def command_status(command: bytes) -> tuple[int, bool]:
    """Status (0000,0900) and whether a data set follows (0000,0800), from an Implicit VR LE
    command set."""
    status = -1
    has_dataset = False
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group == 0 and element == 0x0900:
            status = struct.unpack_from("<H", command, offset)[0]
        elif group == 0 and element == 0x0800:
            has_dataset = struct.unpack_from("<H", command, offset)[0] != 0x0101
        offset += length
    return status, has_dataset


@dataclass
class LeanOutcome:
    """One C-FIND: answers counted and the final status."""

    answers: int
    status: int
    seconds: float


class LeanClient:
    """Send one identifier over new associations, as often as asked.

    Parameters
    ----------
    port : int
        The server's port on ``host``.
    identifier : Dataset
        The C-FIND identifier.
    called, calling : str
        AE titles.
    host : str
        The server's address (loopback).
    timeout : float
        Socket timeout in seconds.
    """

    def __init__(
        self,
        port: int,
        identifier: Dataset,
        called: str = "WLMSERVER",
        calling: str = "LEANFIND",
        host: str = "127.0.0.1",
        timeout: float = 60.0,
    ) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._associate = associate_rq(called, calling)
        self._find = find_request(identifier)

    def find(self) -> LeanOutcome:
        """One association, one C-FIND, release.

        Raises
        ------
        LeanError
            Association rejected, aborted, or a response without a status.
        """
        started = time.perf_counter()
        with socket.create_connection(self.address, timeout=self.timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _Reader(sock)
            sock.sendall(self._associate)
            pdu_type, _ = reader.pdu()
            if pdu_type != 0x02:
                raise LeanError(f"association not accepted (PDU type 0x{pdu_type:02X})")
            sock.sendall(self._find)
            answers, status = self._responses(reader)
            sock.sendall(RELEASE_RQ)
            pdu_type, _ = reader.pdu()
            if pdu_type != 0x06:
                raise LeanError(f"no A-RELEASE-RP (PDU type 0x{pdu_type:02X})")
        return LeanOutcome(answers, status, time.perf_counter() - started)

    @staticmethod
    def _responses(reader: _Reader) -> tuple[int, int]:
        """Receive responses up to the final one: (pending answers, final status)."""
        answers = 0
        command = bytearray()
        status = -1
        in_dataset = False
        while True:
            pdu_type, body = reader.pdu()
            if pdu_type != 0x04:
                raise LeanError(f"unexpected PDU type 0x{pdu_type:02X} while receiving")
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack_from(">I", body, offset)
                header = body[offset + 5]
                last = bool(header & 0x02)
                if header & 0x01:  # a command fragment
                    command += body[offset + 6 : offset + 4 + length]
                    if last:
                        status, in_dataset = command_status(bytes(command))
                        command.clear()
                        if status < 0:
                            raise LeanError("a response without a status")
                        if status in PENDING:
                            answers += 1
                        elif not in_dataset:
                            return answers, status
                elif not in_dataset:
                    raise LeanError("a data set without a command")
                elif last:
                    in_dataset = False
                    if status not in PENDING:
                        return answers, status
                offset += 4 + length


def repeat_in_threads(
    clients: int,
    seconds: float,
    make_query: Callable[[], Callable[[], int]],
    failures: tuple[type[BaseException], ...],
    join_timeout: float = 120.0,
) -> dict[str, float]:
    """``clients`` threads each make a query function and call it until ``seconds`` passed.

    Parameters
    ----------
    make_query : callable
        Called once per thread; returns a function that runs one query and returns its final
        status (0 counts as done, anything else as an error).
    failures : tuple of exception types
        Exceptions that count as an error (the thread pauses 50 ms and goes on).

    Returns
    -------
    dict[str, float]
        ``queries`` (ended with Success), ``errors``, ``seconds``, ``qps`` and ``unfinished``
        (threads still in a query after the join timeout).
    """
    done = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def work(n: int) -> None:
        query = make_query()
        while time.monotonic() < stop:
            try:
                status = query()
            except failures:
                errors[n] += 1
                time.sleep(0.05)
                continue
            if status == 0:
                done[n] += 1
            else:
                errors[n] += 1

    threads = [
        threading.Thread(target=work, args=(n,), name=f"load-client-{n}", daemon=True)
        for n in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, stop - time.monotonic()) + join_timeout)
    elapsed = time.perf_counter() - started
    return {
        "queries": float(sum(done)),
        "errors": float(sum(errors)),
        "seconds": elapsed,
        "qps": sum(done) / elapsed,
        "unfinished": float(sum(t.is_alive() for t in threads)),
    }


def run_clients(
    port: int, identifier: Dataset, clients: int, seconds: float, called: str = "WLMSERVER"
) -> dict[str, float]:
    """``clients`` lean clients repeat the query on new associations for ``seconds``.

    Returns
    -------
    dict[str, float]
        ``queries`` (ended with Success), ``errors``, ``seconds`` and ``qps``.
    """

    def make_query() -> Callable[[], int]:
        client = LeanClient(port, identifier, called=called)
        return lambda: client.find().status

    return repeat_in_threads(clients, seconds, make_query, (OSError, LeanError))


def main(argv: list[str] | None = None) -> int:
    """Repeat a station + modality query from several threads and print queries/s."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--aet", default="WLMSERVER")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--station", default="")
    p.add_argument("--modality", default="")
    p.add_argument("--date", default="")
    args = p.parse_args(argv)
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    item = Dataset()
    item.ScheduledStationAETitle = args.station
    item.Modality = args.modality
    item.ScheduledProcedureStepStartDate = args.date
    ds.ScheduledProcedureStepSequence = [item]
    single = LeanClient(args.port, ds, called=args.aet).find()
    print(f"one query: {single.answers} answers, status 0x{single.status:04X}")
    result = run_clients(args.port, ds, args.clients, args.seconds, called=args.aet)
    print(
        f"{args.clients} clients: {result['queries']:.0f} queries in {result['seconds']:.1f} s "
        f"= {result['qps']:.1f} q/s, {result['errors']:.0f} errors"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
