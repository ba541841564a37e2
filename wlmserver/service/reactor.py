"""Let pynetdicom's per-association threads wait for work instead of polling for it.

Each pynetdicom association runs two threads that poll: the association's reactor sleeps 1 ms
between checks of its message queue, and the DUL (upper layer) reactor sleeps 1 ms between
checks of its socket and its send queue. That is about 2,000 wake-ups a second per open
association: measured here, 8 idle associations cost the server 0.5 of a core, and under load
the polling took most of the CPU of a C-FIND (a server answering a 47-answer query from 8
clients went from 110 to 190 queries/s without it).

:func:`install` replaces those two sleeps, and only those (the caller's frame is checked),
while an *accepted* association is established (state Sta6; PS3.8 9.2):

- the DUL thread waits in ``select`` on its socket and on a wake-up socket pair, so incoming
  data wakes it at once, and so does a primitive queued for sending (``send_pdu`` and
  ``kill_dul`` are wrapped to signal it); it wakes at least every :data:`DUL_IDLE` seconds;
- the association thread waits on an event that the DUL thread sets whenever it goes idle
  (after handling what arrived), and wakes at least every :data:`ASSOCIATION_IDLE` seconds
  (its network-timeout checks have that resolution).

Everything else (negotiation, release, abort, the requestor side, other sleeps) keeps
pynetdicom's own timing.

It also bounds what a peer of an accepted association can hold (:func:`read_pdu`, which
replaces pynetdicom's ``_read_pdu_data`` for acceptors):

- a PDU must arrive whole within a deadline (the ACSE timeout before the association is
  established, then the DIMSE or network timeout): pynetdicom's accepted sockets have no
  timeout, so a peer that sent part of a PDU held its thread and its association slot forever;
- a PDU longer than the receiver accepts is refused before its body is read: before the
  association, :attr:`Limits.associate_rq` bytes; after it, the maximum length this server
  announced in its A-ASSOCIATE-AC (PS3.8 D.1: a P-DATA-TF PDU's variable field shall not
  exceed it); pynetdicom buffered whatever followed a header claiming 4 GB;
- the command set and the data set of one DIMSE message are bounded (:class:`Limits`),
  counted from the P-DATA-TF PDVs as they arrive (PS3.8 E.2), before pynetdicom reassembles
  them;
- a connection closed before its A-ASSOCIATE-RQ ends its association thread at once (it
  waited for the ACSE timeout, holding a slot);
- a request without a field PS3.7 requires (an N-SET without its Requested SOP Instance
  UID), which pynetdicom ignored without a response, aborts the association at once.

An A-ASSOCIATE-RQ that a check of its bytes refuses (:func:`check_request`: an address
off the allow-list) is answered with an A-ASSOCIATE-RJ before pynetdicom decodes any of it.

A refused PDU is answered with an A-ABORT (source: service provider, PS3.8 9.3.8) and the
connection closed; each refusal is logged in one line. If this pynetdicom lacks the
internals all this relies on, nothing is changed and a warning is logged.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOGGER = logging.getLogger(__name__)

#: Longest wait of an idle DUL thread of an established accepted association, seconds.
DUL_IDLE = 0.1
#: Longest wait of the association thread between its checks, seconds.
ASSOCIATION_IDLE = 0.05

_installed = False


@dataclass(frozen=True)
class Limits:
    """What one accepted connection may send (see the module docstring).

    Attributes
    ----------
    associate_rq : int
        Longest PDU accepted before the association is established, bytes. 64 KiB holds an
        A-ASSOCIATE-RQ with the 128 presentation contexts PS3.8 allows (odd IDs 1-255), each
        with three 64-character transfer syntax UIDs (about 36 KB), and a user identity
        item: a worklist SCU proposes a handful.
    command : int
        Longest command set of one DIMSE message, bytes (a C-FIND-RQ's is about 100).
    data_set : int or None
        Longest data set of one DIMSE message, bytes; None: unbounded (but every PDU is
        still bounded by the maximum length announced).
    """

    associate_rq: int = 65536
    command: int = 65536
    data_set: int | None = None


#: The limits of an accepted association whose server set none (:func:`set_limits`).
DEFAULT_LIMITS = Limits()

#: A-ABORT PDUs sent when a PDU is refused (PS3.8 9.3.8: source 2, the service provider;
#: reason 6, invalid PDU parameter value, or 0, not specified, for a message too long).
_ABORT_INVALID = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])
_ABORT_UNSPECIFIED = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00])

_PDU_HEADER = struct.Struct(">BBL")
#: States before an A-ASSOCIATE-RQ was received (PS3.8 9.2: Sta2 awaits it; the DUL may read
#: before it has processed the transport connection event, still in Sta1).
_BEFORE_REQUEST = frozenset({"Sta1", "Sta2"})
_PDV_HEADER = struct.Struct(">LBB")


#: An A-ASSOCIATE-RJ PDU with its result, source and reason/diagnostic (PS3.8 9.3.4).
_REJECT = struct.Struct(">BBLBBBB")

#: A function given the bytes of an A-ASSOCIATE-RQ before it is decoded: the A-ASSOCIATE-RJ
#: (result, source, reason) to answer it with, or None to let pynetdicom decode it.
RequestCheck = Callable[[bytes], "tuple[int, int, int] | None"]


def check_request(assoc: Any, check: RequestCheck) -> None:
    """Judge an accepted connection's A-ASSOCIATE-RQ from its bytes, before pynetdicom decodes
    it (set it on ``EVT_CONN_OPEN``; see :func:`read_pdu`).

    pynetdicom's decoding of one 64 KiB request of junk items costs a tenth of a second of CPU
    and logs a line per item; a peer that will be refused anyway (an address off the
    allow-list) should cost neither."""
    assoc.__dict__["_wlmserver_check_request"] = check


def set_limits(assoc: Any, limits: Limits) -> None:
    """Set what an accepted association's peer may send (call it on ``EVT_CONN_OPEN``)."""
    assoc.__dict__["_wlmserver_limits"] = limits


def on_end(assoc: Any, report: Any) -> None:
    """Call ``report(assoc)`` in the association's thread when it ends, however it ends
    (set it on ``EVT_CONN_OPEN``, before the thread starts)."""
    assoc.__dict__["_wlmserver_on_end"] = report


def end_reason(assoc: Any) -> str | None:
    """Why :func:`read_pdu` closed an association's connection, if it did."""
    return assoc.__dict__.get("_wlmserver_end")  # type: ignore[no-any-return]


class _Waker:
    """A socket pair: a byte written to one end makes ``select`` on the other return."""

    __slots__ = ("receiver", "sender")

    def __init__(self) -> None:
        self.receiver, self.sender = socket.socketpair()
        self.receiver.setblocking(False)
        self.sender.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self.sender.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.receiver.recv(4096):
                pass

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


class _Clock:
    """Stands in for the ``time`` module inside one pynetdicom module: ``sleep`` called from
    that module's reactor loop waits for work; every other use is the real ``time``."""

    def __init__(self, loop_code: Any, wait: Any) -> None:
        self._loop_code = loop_code
        self._wait = wait

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if sys._getframe(1).f_code is self._loop_code:
            self._wait(threading.current_thread(), seconds)
        else:
            time.sleep(seconds)


def _association_event(assoc: Any) -> threading.Event:
    event = assoc.__dict__.get("_wlmserver_work")
    if event is None:
        event = assoc.__dict__.setdefault("_wlmserver_work", threading.Event())
    return event  # type: ignore[no-any-return]


def _waker(dul: Any) -> _Waker | None:
    return dul.__dict__.get("_wlmserver_waker")  # type: ignore[no-any-return]


def _dul_wait(dul: Any, seconds: float) -> None:
    """The DUL reactor's idle sleep."""
    assoc = getattr(dul, "assoc", None)
    if assoc is None or not assoc.is_acceptor:
        time.sleep(seconds)
        return
    if dul.state_machine.current_state == "Sta1" and dul.event_queue.empty():
        _wake_request_wait(dul)  # the connection closed before an association was made
    _association_event(assoc).set()  # what arrived has been handled: let it look
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if (
        sock is None
        or dul._kill_thread
        or dul.state_machine.current_state != "Sta6"
        or not dul.to_provider_queue.empty()
    ):
        time.sleep(seconds)
        return
    waker = _waker(dul)
    if waker is None:
        waker = dul.__dict__["_wlmserver_waker"] = _Waker()
        if not dul.to_provider_queue.empty():  # queued before the waker existed
            return
    quick_ack(sock)  # the peer's next request is acknowledged at once (see quick_ack)
    try:
        select.select([sock, waker.receiver], [], [], DUL_IDLE)
    except (OSError, ValueError):  # the socket was closed meanwhile
        time.sleep(seconds)
        return
    waker.drain()


def _wake_request_wait(dul: Any) -> None:
    """End an acceptor's wait for the A-ASSOCIATE-RQ of a connection that is gone.

    pynetdicom's association thread waits for it with ``receive_pdu(wait=True,
    timeout=acse_timeout)``; when the peer closes first nothing is queued, so the thread (and
    its association slot) stayed for the whole ACSE timeout. ``None`` is what that call returns
    on a timeout: the thread then closes the connection and ends. Only queued when nothing
    else was delivered, so an association's own primitives are never preceded by it.
    """
    assoc = dul.assoc
    if (
        dul.__dict__.get("_wlmserver_woken")
        or assoc.is_established
        or getattr(assoc.requestor, "primitive", None) is not None
        or not dul.to_user_queue.empty()
    ):
        return
    dul.__dict__["_wlmserver_woken"] = True
    dul.to_user_queue.put(None)


def _peer_of(dul: Any) -> str:
    requestor = dul.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def _timeout(dul: Any) -> tuple[float | None, str]:
    """How long a PDU that starts arriving now may take, seconds, and that timeout's name:
    the ACSE timeout before the association (PS3.8 9.1.5, the ARTIM timer's), then the DIMSE
    timeout, else the network timeout."""
    assoc = dul.assoc
    if dul.state_machine.current_state in _BEFORE_REQUEST:
        candidates = (
            ("ACSE timeout", assoc.acse_timeout),
            ("network timeout", assoc.network_timeout),
        )
    else:
        candidates = (
            ("DIMSE timeout", assoc.dimse_timeout),
            ("network timeout", assoc.network_timeout),
        )
    for name, seconds in candidates:
        if seconds is not None:
            return float(seconds), name
    return None, "no timeout"


#: ``TCP_QUICKACK`` where the platform has it (Linux).
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def quick_ack(sock: Any) -> None:
    """Acknowledge the next segments from the peer at once (Linux ``TCP_QUICKACK``).

    Peers that leave Nagle's algorithm on and write a PDU in two writes (DCMTK 3.6.7's
    ``findscu``, many modality stacks) send the second part only when the first is
    acknowledged; a receiver that delays its ACK (up to 40 ms on Linux, once the connection
    has turned interactive) stalls every such request by that long. The kernel leaves quick-ACK
    mode again by itself, so it is re-armed before each wait for data. Elsewhere: nothing.
    """
    if _QUICKACK is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _recv_exactly(sock: Any, count: int, deadline: float | None) -> bytes:
    """``count`` bytes from a socket, fewer if the peer closed; TimeoutError past the deadline.

    The wait is bounded by ``select`` so the socket's own timeout (which bounds sends) is left
    as it is; the socket may be written to by another thread meanwhile (the fast path).
    """
    buffer = bytearray()
    while len(buffer) < count:
        quick_ack(sock)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            pending = getattr(sock, "pending", None)  # TLS: buffered data select cannot see
            if not (pending and pending()):
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    raise TimeoutError
        chunk = sock.recv(min(count - len(buffer), 65536))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


def _refuse(dul: Any, abort: bytes | None, message: str, *args: Any) -> None:
    """Log one line, send an A-ABORT (when given) and close: Evt17, the transport closed."""
    LOGGER.warning("connection from %s: " + message, _peer_of(dul), *args)
    dul.assoc.__dict__["_wlmserver_end"] = (message % args).partition(";")[0]
    sock = getattr(dul.socket, "socket", None)
    if abort is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.sendall(abort)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    dul.event_queue.put("Evt17")


def _reject(dul: Any, reject: tuple[int, int, int]) -> None:
    """Answer an A-ASSOCIATE-RQ that :func:`check_request` refused with an A-ASSOCIATE-RJ
    (PS3.8 9.3.4) and close the connection (Evt17); the check logged why."""
    sock = getattr(dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.sendall(_REJECT.pack(0x03, 0, 4, 0, *reject))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    dul.event_queue.put("Evt17")


def _check_message_sizes(dul: Any, body: bytes, limits: Limits) -> str | None:
    """Count the command and data set bytes of the DIMSE message being received (PS3.8 E.2:
    each PDV's message control header says which it is and whether it is the last
    fragment); what is too long, or None."""
    counts = dul.__dict__.setdefault("_wlmserver_message", [0, 0])  # command, data set
    offset = 0
    while offset + _PDV_HEADER.size <= len(body):
        length, _, control = _PDV_HEADER.unpack_from(body, offset)
        fragment = max(length - 2, 0)
        offset += 4 + length
        which = 0 if control & 0x01 else 1
        counts[which] += fragment
        limit = limits.command if which == 0 else limits.data_set
        if limit is not None and counts[which] > limit:
            part = "command set" if which == 0 else "data set"
            return f"a DIMSE {part} longer than {limit} bytes"
        if control & 0x02:
            counts[which] = 0
    return None


#: Set in an association's ``__dict__`` when its connection was closed before the association
#: began: :func:`read_pdu` then reads nothing more (see :func:`close_early`).
CLOSED_KEY = "_wlmserver_closed"


def close_early(assoc: Any, sock: Any, reason: str) -> None:
    """Close a connection before its association begins: nothing it sent is read any more,
    and the association's end line gives ``reason``."""
    assoc.__dict__[CLOSED_KEY] = True
    assoc.__dict__["_wlmserver_end"] = reason
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # the DUL reads the end: Evt17, the thread ends


def read_pdu(dul: Any, original: Any) -> None:
    """Read one PDU of an accepted association, within bounds (see the module docstring).

    Emits what pynetdicom's ``_read_pdu_data`` emits (PS3.8 9.2: Evt6, Evt10, Evt12, Evt16,
    Evt17 transport closed, Evt19 invalid PDU); refused PDUs become Evt17 after an A-ABORT.
    """
    assoc = dul.assoc
    sock = getattr(dul.socket, "socket", None)
    if not assoc.is_acceptor or sock is None:
        original(dul)
        return
    if assoc.__dict__.get(CLOSED_KEY):
        # closed before the association began (a failed TLS handshake, a host over its
        # connection limit): what the peer sent meanwhile is not read. After a refused TLS 1.3
        # handshake the client's A-ASSOCIATE-RQ arrives anyway, and the shut-down SSL socket
        # would hand over its raw encrypted bytes as a "PDU".
        dul.event_queue.put("Evt17")
        return
    limits: Limits = assoc.__dict__.get("_wlmserver_limits", DEFAULT_LIMITS)
    seconds, timeout_name = _timeout(dul)
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        header = _recv_exactly(sock, 6, deadline)
        if len(header) < 6:
            dul.event_queue.put("Evt17")  # closed by the peer
            return
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            dul.event_queue.put("Evt19")  # as pynetdicom: unrecognised PDU
            return
        limit: int | None
        if dul.state_machine.current_state in _BEFORE_REQUEST:
            limit = limits.associate_rq
        elif pdu_type == 0x04:
            limit = assoc.acceptor.maximum_length or None
        else:
            limit = limits.associate_rq
        if limit is not None and length > limit:
            _refuse(
                dul,
                _ABORT_INVALID,
                "PDU type 0x%02X of %d bytes refused (at most %d accepted here)",
                pdu_type,
                length,
                limit,
            )
            return
        body = _recv_exactly(sock, length, deadline)
    except TimeoutError:
        _refuse(dul, None, "no complete PDU within %g s (%s); closed", seconds, timeout_name)
        return
    except OSError:
        dul.event_queue.put("Evt17")
        return
    if len(body) < length:
        dul.event_queue.put("Evt17")  # closed in the middle of a PDU
        return
    if pdu_type == 0x04:
        too_long = _check_message_sizes(dul, body, limits)
        if too_long:
            _refuse(dul, _ABORT_UNSPECIFIED, "%s refused; association aborted", too_long)
            return
    check = assoc.__dict__.get("_wlmserver_check_request")
    if (
        pdu_type == 0x01
        and check is not None
        and dul.state_machine.current_state in _BEFORE_REQUEST
    ):
        reject = check(header + body)
        if reject is not None:
            _reject(dul, reject)
            return
    try:
        pdu, event = dul._decode_pdu(bytearray(header + body))
    except Exception as exc:  # as pynetdicom: any decoding failure is Evt19
        LOGGER.warning(
            "connection from %s: invalid PDU type 0x%02X (%s)",
            _peer_of(dul),
            pdu_type,
            type(exc).__name__,
        )
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _association_wait(assoc: Any, seconds: float) -> None:
    """The association reactor's sleep between checks."""
    if not assoc.is_acceptor or not assoc.is_established or assoc._kill:
        time.sleep(seconds)
        return
    event = _association_event(assoc)
    event.wait(ASSOCIATION_IDLE)
    event.clear()


class OneLineFromPynetdicom(logging.Filter):
    """Drop the traceback pynetdicom logs when a peer's bytes make one of its decoders or its
    state machine fail: a peer can provoke it at will, and the log line above it already says
    what happened (the traceback is kept when pynetdicom's debug log is shown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            record.msg, record.args = f"{record.getMessage()} ({kind})", None
            record.exc_info, record.exc_text = None, None
        return True


def quiet_peer_tracebacks() -> None:
    """Put :class:`OneLineFromPynetdicom` on every pynetdicom logger (a filter on a logger
    applies to its own records only, so each module's logger gets one)."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "pynetdicom"]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineFromPynetdicom) for f in logger.filters):
            logger.addFilter(OneLineFromPynetdicom())


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed


def install() -> bool:
    """Make established accepted associations wait for work (see the module docstring).

    Returns
    -------
    bool
        Whether it is in effect (False with a pynetdicom whose internals differ).
    """
    global _installed
    quiet_peer_tracebacks()
    if _installed:
        return True
    try:
        from pynetdicom import association, dul
        from pynetdicom.association import Association
        from pynetdicom.dul import DULServiceProvider

        dul_loop = DULServiceProvider.run_reactor.__code__
        association_loop = Association._run_reactor.__code__
        run_association = Association.run_reactor
        originals = (
            DULServiceProvider.run_reactor,
            DULServiceProvider.send_pdu,
            DULServiceProvider.kill_dul,
            DULServiceProvider._read_pdu_data,
        )
        DULServiceProvider._decode_pdu  # noqa: B018 - read_pdu decodes with it
        serve_request = Association._serve_request
        if getattr(dul, "time", None) is not time or getattr(association, "time", None) is not time:
            raise AttributeError("pynetdicom's modules do not use the time module")
    except (ImportError, AttributeError) as exc:
        LOGGER.warning("pynetdicom's reactors keep polling (%s)", exc)
        return False
    run_reactor, send_pdu, kill_dul, read_pdu_data = originals

    def run_reactor_closing(self: Any) -> None:
        try:
            run_reactor(self)
        except Exception as exc:  # bytes from a peer that pynetdicom's state machine or
            # decoders cannot handle (a second A-ASSOCIATE-RQ, a command without its field,
            # an invalid A-ABORT source ...): one line, an A-ABORT, and this association ends,
            # instead of a dead thread and a traceback on stderr
            _refuse(
                self,
                _ABORT_UNSPECIFIED,
                "the peer sent what the DICOM upper layer cannot handle (%s); association aborted",
                type(exc).__name__,
            )
            # the association thread sees this thread end and ends too (never kill() here:
            # it waits for this very thread)
        finally:
            waker = self.__dict__.pop("_wlmserver_waker", None)
            if waker is not None:
                waker.close()
            assoc = getattr(self, "assoc", None)
            if assoc is not None:
                _association_event(assoc).set()
                if assoc.is_acceptor:
                    _wake_request_wait(self)

    def read_pdu_data_bounded(self: Any) -> None:
        read_pdu(self, read_pdu_data)

    def run_association_reporting(self: Any) -> None:
        try:
            run_association(self)
        finally:
            report = self.__dict__.get("_wlmserver_on_end")
            if report is not None:
                try:
                    report(self)
                except Exception:
                    LOGGER.exception("cannot report the end of an association")

    def serve_request_or_abort(self: Any, msg: Any, context_id: int) -> None:
        # pynetdicom ignores a request without a field PS3.7 requires (an N-SET without its
        # Requested SOP Instance UID) with a warning: no response, and the peer waits for
        # its DIMSE timeout while the association holds its slot. It cannot be answered (a
        # response needs those fields), so it is aborted at once, in one line.
        if self.is_acceptor and not self._sent_release and not msg.is_valid_request:
            requestor = self.requestor
            LOGGER.warning(
                "connection from %s:%s: a %s without the fields PS3.7 requires; association "
                "aborted",
                requestor.address,
                requestor.port,
                getattr(msg, "msg_type", type(msg).__name__),
            )
            self.__dict__["_wlmserver_end"] = "aborted: a request without its required fields"
            self.abort()
            return
        serve_request(self, msg, context_id)

    def send_pdu_waking(self: Any, primitive: Any) -> None:
        send_pdu(self, primitive)
        waker = _waker(self)
        if waker is not None:
            waker.wake()

    def kill_dul_waking(self: Any) -> None:
        kill_dul(self)
        waker = _waker(self)
        if waker is not None:
            waker.wake()

    Association.run_reactor = run_association_reporting  # type: ignore[method-assign]
    Association._serve_request = serve_request_or_abort  # type: ignore[method-assign]
    DULServiceProvider.run_reactor = run_reactor_closing  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = send_pdu_waking  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul_waking  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = read_pdu_data_bounded  # type: ignore[method-assign]
    setattr(dul, "time", _Clock(dul_loop, _dul_wait))  # noqa: B010 - its module global
    setattr(association, "time", _Clock(association_loop, _association_wait))  # noqa: B010
    _installed = True
    return True
