"""Hand encoded answers to pynetdicom, and stream them to the socket.

Answers arrive as bytes (:class:`~wlmserver.matching.encoding.EncodedAnswer`);
:func:`install` makes pynetdicom send them as they are instead of re-encoding a ``Dataset``,
and :class:`AnswerStream` writes Pending responses straight to the association's socket in
batches. Both rely on pynetdicom 3.0 internals and fall back, with a warning, when those are
missing.
"""

from __future__ import annotations

import logging
import ssl
import struct
from typing import Any

from wlmserver.matching.encoding import EncodedAnswer

LOGGER = logging.getLogger(__name__)


_installed = False


def installed() -> bool:
    """Whether :func:`install` made pynetdicom send :class:`EncodedAnswer` bytes."""
    return _installed


def install() -> bool:
    """Make pynetdicom send :class:`EncodedAnswer` bytes as they are, and stop it from
    pretty-printing every request and answer for a debug log. Returns whether the fast path
    is active (it is not if this pynetdicom has no ``service_class.encode`` to wrap)."""
    global _installed
    if _installed:
        return True
    try:
        from pynetdicom import _config, service_class
    except ImportError:
        return False
    original = getattr(service_class, "encode", None)
    if original is None:
        LOGGER.warning("pynetdicom has no service_class.encode: answers use pydicom's encoder")
        return False

    def encode(
        ds: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> Any:
        if isinstance(ds, EncodedAnswer):
            return ds.encode(is_implicit_vr, is_little_endian, deflated)
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    setattr(service_class, "encode", encode)  # noqa: B010 - not a public attribute
    _install_pending_fast_path()
    # pynetdicom would decode every request identifier and pretty-print it at INFO level
    # (patient data); wlmserver logs identifiers itself, at debug level only
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _installed = True
    return True


def pending_fragments(
    command: bytes, data: bytes | None, max_pdu: int
) -> list[tuple[bytes, bytes]]:
    """The PDV fragments of one message, as pynetdicom's ``encode_msg`` cuts them (PS3.8
    E.2): ``(message control header, fragment)``; the header is 0x01/0x03 for command
    fragments, 0x00/0x02 for data set fragments, the second value marking the last one.
    ``data`` is None for a message without a data set."""
    size = max_pdu - 6 if max_pdu else max(len(command), len(data or b""), 1)
    out = []
    streams = [(command, b"\x01", b"\x03")]
    if data is not None:
        streams.append((data, b"\x00", b"\x02"))
    for stream, more, last in streams:
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)] or [b""]
        for n, chunk in enumerate(chunks):
            out.append((last if n == len(chunks) - 1 else more, chunk))
    return out


def pending_pdata(context_id: int, command: bytes, data: bytes | None, max_pdu: int) -> list[Any]:
    """P-DATA primitives for one message, one PDV each, as pynetdicom's ``encode_msg`` makes
    them (see :func:`pending_fragments`)."""
    from pynetdicom.pdu_primitives import P_DATA

    out = []
    for flag, chunk in pending_fragments(command, data, max_pdu):
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, flag + chunk))
        out.append(pdata)
    return out


def p_data_tf(context_id: int, command: bytes, data: bytes | None, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs (PS3.8 9.3.5) of one message, one PDV each, as bytes: exactly what
    pynetdicom's DUL writes for the primitives of :func:`pending_pdata`."""
    limit = max_pdu - 6
    if max_pdu == 0 or (len(command) <= limit and (data is None or len(data) <= limit)):
        # one PDU for the command set, one for the data set: the usual case
        out = _PDU_HEAD.pack(0x04, 0, len(command) + 6, len(command) + 2, context_id) + b"\x03"
        if data is None:
            return out + command
        head = _PDU_HEAD.pack(0x04, 0, len(data) + 6, len(data) + 2, context_id) + b"\x02"
        return b"".join((out, command, head, data))
    parts = bytearray()
    for flag, chunk in pending_fragments(command, data, max_pdu):
        pdv_length = len(chunk) + 2
        parts += _PDU_HEAD.pack(0x04, 0, pdv_length + 4, pdv_length, context_id)
        parts += flag
        parts += chunk
    return bytes(parts)


#: P-DATA-TF PDU header and its one PDV item's header, without the message control byte.
_PDU_HEAD = struct.Struct(">BBLLB")


#: Pending answers are written to the socket in batches of about this many bytes (and before
#: any other message): fewer system calls and TCP segments for both peers.
SEND_BATCH_BYTES = 32768


class _DirectSender:
    """Writes Pending C-FIND responses of one association straight to its socket.

    pynetdicom sends a PDU by queueing it for its DUL thread, which polls the queue in a
    loop with a 1 ms sleep, runs its state machine and fires events per PDU. That hop costs
    more CPU than encoding the answer, and while the queue is full the DUL thread does not
    read the socket (so a C-CANCEL goes unseen). In state Sta6 (association established) a
    P-DATA-TF changes no state (PS3.8 9.2, action DT-1), so the association's own thread may
    write it directly; the DUL thread keeps reading, and sends everything else. Pending
    responses are batched (:data:`SEND_BATCH_BYTES`) and flushed before any other message.
    ``EVT_PDU_SENT`` and ``EVT_DATA_SENT`` are not fired for them.

    Not over TLS: an :class:`ssl.SSLSocket` is one OpenSSL ``SSL`` object, which must not be
    used by two threads at once (OpenSSL's rule; CPython adds no lock), and here the DUL
    thread would be reading it (``SSL_read``, which in TLS 1.3 may also write, e.g. a key
    update) while this thread writes (``SSL_write``). Serialising both with a lock would
    hold the writer up while the reader waits for data. So on a TLS connection every answer
    goes through pynetdicom's queue, written by the DUL thread, the one thread that reads;
    the handler then lets that queue drain every few answers so that a C-CANCEL is read
    (``handlers._let_the_peer_speak``). The command sets are still built once.
    """

    __slots__ = ("broken", "buffer", "dimse")

    def __init__(self, dimse: Any) -> None:
        self.dimse = dimse
        self.buffer = bytearray()
        self.broken = False

    def usable(self) -> bool:
        dul = self.dimse.dul
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        return (
            not self.broken
            and sock is not None
            and not isinstance(sock, ssl.SSLSocket)  # TLS: see the class docstring
            and dul.state_machine.current_state == "Sta6"
            and dul.to_provider_queue.empty()
        )

    def add(self, pdus: bytes) -> None:
        self.buffer += pdus
        if len(self.buffer) >= SEND_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        dul = self.dimse.dul
        data, self.buffer = bytes(self.buffer), bytearray()
        if self.broken:
            return
        try:
            dul.socket.socket.sendall(data)
        except (OSError, AttributeError):
            # as pynetdicom's AssociationSocket.send does: Evt17, transport connection closed
            self.broken = True
            dul.event_queue.put("Evt17")
            return
        dul._idle_timer.restart()  # streaming answers is not idling


def flush(assoc: Any) -> None:
    """Send the Pending responses batched for an association now (they otherwise wait for
    :data:`SEND_BATCH_BYTES` or the final response)."""
    sender = getattr(getattr(assoc, "dimse", None), "__dict__", {}).get("_wlmserver_sender")
    if sender is not None:
        sender.flush()


def _sender(dimse: Any) -> _DirectSender:
    sender = dimse.__dict__.get("_wlmserver_sender")
    if sender is None:
        sender = dimse.__dict__["_wlmserver_sender"] = _DirectSender(dimse)
    return sender  # type: ignore[no-any-return]


#: Encoded C-FIND-RSP command sets by (message ID responded to, SOP class, status, whether a
#: data set follows): nothing else varies in those without ErrorComment or OffendingElement.
_COMMANDS: dict[tuple[int, str, int, bool], bytes] = {}
_COMMANDS_MAX = 512
#: Statuses whose responses take the fast path: Pending (both), Success, Cancel.
FAST_STATUSES = frozenset({0xFF00, 0xFF01, 0x0000, 0xFE00})


def command_set(primitive: Any) -> bytes:
    """The encoded command set (Implicit VR Little Endian) of a C-FIND-RSP primitive without
    ErrorComment and OffendingElement, built by pynetdicom once per distinct one."""
    key = (
        primitive.MessageIDBeingRespondedTo,
        primitive.AffectedSOPClassUID,
        primitive.Status,
        primitive.Identifier is not None,
    )
    command = _COMMANDS.get(key)
    if command is None:
        from pynetdicom.dimse_messages import C_FIND_RSP
        from pynetdicom.dsutils import encode as pynetdicom_encode

        message = C_FIND_RSP()
        message.primitive_to_message(primitive)
        encoded = pynetdicom_encode(message.command_set, True, True)
        if encoded is None:
            raise ValueError("pynetdicom could not encode a C-FIND-RSP command set")
        command = bytes(encoded)
        if len(_COMMANDS) >= _COMMANDS_MAX:
            _COMMANDS.clear()
        _COMMANDS[key] = command
    return command


class AnswerStream:
    """Writes the Pending responses of one C-FIND straight to the association's socket.

    pynetdicom's C-FIND loop does, per yielded answer, more than building and encoding it
    costs (status validation, response primitive setters, encoding hooks, P-DATA primitives).
    A handler that has a stream sends each answer with :meth:`send` and yields only the
    final status; pynetdicom sends that one, after the batched answers are flushed.
    Made by :func:`answer_stream`.
    """

    __slots__ = ("command", "context_id", "deflated", "implicit", "little", "max_pdu", "sender")

    def __init__(
        self,
        sender: _DirectSender,
        context_id: int,
        command: bytes,
        transfer_syntax: Any,
        max_pdu: int,
    ) -> None:
        self.sender = sender
        self.context_id = context_id
        self.command = command
        self.implicit = bool(transfer_syntax.is_implicit_VR)
        self.little = bool(transfer_syntax.is_little_endian)
        self.deflated = bool(transfer_syntax.is_deflated)
        self.max_pdu = max_pdu

    def send(self, answer: EncodedAnswer) -> bool:
        """Send one Pending response; False once the connection is gone."""
        data = answer.encode(self.implicit, self.little, self.deflated)
        self.sender.add(p_data_tf(self.context_id, self.command, data, self.max_pdu))
        return not self.sender.broken


def answer_stream(event: Any) -> AnswerStream | None:
    """An :class:`AnswerStream` for the C-FIND of a pynetdicom ``EVT_C_FIND`` event, or None
    where answers must be yielded to pynetdicom (fast path not installed, pynetdicom logging
    at debug level, association not in a state to write to, a stand-in event)."""
    if not _installed or logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return None
    try:
        from io import BytesIO

        from pydicom.uid import UID
        from pynetdicom.dimse_primitives import C_FIND

        dimse = event.assoc.dimse
        request = event.request
        context = event.context
        sender = _sender(dimse)
        if not sender.usable():
            return None
        primitive = C_FIND()
        primitive.MessageIDBeingRespondedTo = request.MessageID
        primitive.AffectedSOPClassUID = request.AffectedSOPClassUID
        primitive.Status = 0xFF00
        primitive.Identifier = BytesIO(b"\0\0")
        return AnswerStream(
            sender,
            context.context_id,
            command_set(primitive),
            UID(context.transfer_syntax),
            dimse.maximum_pdu_size,
        )
    except AttributeError:
        return None


def _install_pending_fast_path() -> None:
    """Send C-FIND responses without building their command set as a pydicom dataset each
    time, and without the DUL thread's queue.

    A C-FIND-RSP command set (SOP class, message ID responded to, status, whether a data set
    follows) is the same for every Pending response of a C-FIND and for the final Success of
    every C-FIND with the same message ID: pynetdicom builds and encodes it as a pydicom
    dataset per response, about 40 % of a streamed C-FIND and a sixth of a short one. It is
    built by pynetdicom's own code once and reused; the P-DATA-TF PDUs are written by
    :class:`_DirectSender`. Other messages (failures, which carry ErrorComment), and all
    messages while pynetdicom logs at debug level, take pynetdicom's own path (after any
    batched answers).
    """
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_primitives import C_FIND

    original = DIMSEServiceProvider.send_msg
    dimse_logger = logging.getLogger("pynetdicom")

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        sender = _sender(self)
        if (
            isinstance(primitive, C_FIND)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status in FAST_STATUSES
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not dimse_logger.isEnabledFor(logging.DEBUG)
        ):
            command = command_set(primitive)
            identifier = primitive.Identifier
            data = None if identifier is None else identifier.getvalue()
            if sender.buffer or sender.usable():
                sender.add(p_data_tf(context_id, command, data, self.maximum_pdu_size))
                if primitive.Status not in (0xFF00, 0xFF01):
                    sender.flush()
                return
            for pdata in pending_pdata(context_id, command, data, self.maximum_pdu_size):
                self.dul.send_pdu(pdata)
            return
        sender.flush()
        original(self, primitive, context_id)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
