"""Encode answers to bytes directly, and hand the bytes to pynetdicom.

An answer is a list of ``(tag, vr, value)`` elements built from an entry's record. Building a
pydicom ``Dataset`` for each answer and having pydicom write it cost more than half of the time
of a streamed C-FIND (a profile at 10,000 answers: 35 % pydicom's writer, 15 % building
datasets, 6 % pretty-printing them for a debug log nobody sees). This module writes the same
bytes pydicom would (PS3.5 7.1, 7.5: sequences and items of defined length, values padded to
even length) for explicit and implicit VR little endian and explicit VR big endian, and
:func:`install` makes pynetdicom send an :class:`EncodedAnswer` as it is.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

LOGGER = logging.getLogger(__name__)

AnswerValue = tuple[str, ...] | list["AnswerItem"]
AnswerElement = tuple[int, str, AnswerValue]
AnswerItem = list[AnswerElement]

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _value_bytes(vr: str, values: tuple[str, ...], e: str, encodings: list[str]) -> bytes:
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        numbers = [float(v) if code in "fd" else int(v) for v in values]
        return struct.pack(f"{e}{len(numbers)}{code}", *numbers)
    if vr == "AT":
        return b"".join(struct.pack(f"{e}HH", int(v[:4], 16), int(v[4:], 16)) for v in values)
    if vr in _BYTES_VRS:
        data = bytes.fromhex(values[0]) if values else b""
        return data + b"\x00" if len(data) % 2 else data
    text = "\\".join(values)
    if text.isascii():
        data = text.encode("ascii")
    elif vr == "PN":
        data = b"\\".join(PersonName(v).encode(encodings) for v in values)
    elif vr in _CHARSET_VRS:
        data = encode_string(text, encodings)
    else:
        data = text.encode("latin-1")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _header(tag: int, vr: str, length: int, implicit: bool, e: str) -> bytes:
    head = struct.pack(f"{e}HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(f"{e}L", length)
    if vr in _LONG_VRS:
        return head + vr.encode("ascii") + b"\x00\x00" + struct.pack(f"{e}L", length)
    return head + vr.encode("ascii") + struct.pack(f"{e}H", length)


def encode_elements(
    elements: Sequence[AnswerElement], implicit: bool, little: bool, charset: tuple[str, ...]
) -> bytes:
    """Encode answer elements (in tag order) the way pydicom's ``write_dataset`` does.

    Parameters
    ----------
    elements : sequence of (tag, vr, value)
        ``value`` is a tuple of decoded strings, or a list of items for ``SQ``.
    implicit, little : bool
        The transfer syntax.
    charset : tuple of str
        The Specific Character Set the text is encoded in.
    """
    e = "<" if little else ">"
    encodings = convert_encodings(list(charset) if charset else None)
    return _encode(elements, implicit, e, encodings)


def _encode(
    elements: Sequence[AnswerElement], implicit: bool, e: str, encodings: list[str]
) -> bytes:
    out: list[bytes] = []
    for tag, vr, value in elements:
        if vr == "SQ":
            items = []
            for item in value:
                data = _encode(item, implicit, e, encodings)  # type: ignore[arg-type]
                items.append(struct.pack(f"{e}HHL", 0xFFFE, 0xE000, len(data)) + data)
            body = b"".join(items)
        else:
            body = _value_bytes(vr, value, e, encodings)  # type: ignore[arg-type]
        out.append(_header(tag, vr, len(body), implicit, e))
        out.append(body)
    return b"".join(out)


class EncodedAnswer(Dataset):
    """An answer that encodes itself; pynetdicom sends its bytes once :func:`install` ran.

    It is a (empty) ``Dataset`` only so that pynetdicom passes it along; ``as_dataset()``
    builds the equivalent pydicom dataset (for logs, tests and the fallback path).
    """

    def __init__(self, elements: list[AnswerElement], charset: tuple[str, ...]) -> None:
        super().__init__()
        self.__dict__["answer_elements"] = elements
        self.__dict__["answer_charset"] = charset

    def encode(self, implicit: bool, little: bool, deflated: bool = False) -> bytes:
        """The answer's bytes in a transfer syntax."""
        data = encode_elements(self.answer_elements, implicit, little, self.answer_charset)
        if deflated:
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            data = compressor.compress(data) + compressor.flush()
        return data


_installed = False


def installed() -> bool:
    """Whether :func:`install` made pynetdicom send :class:`EncodedAnswer` bytes."""
    return _installed


def install() -> bool:
    """Make pynetdicom send :class:`EncodedAnswer` bytes as they are, and stop it from
    pretty-printing every answer for a debug log. Returns whether the fast path is active
    (it is not if this pynetdicom has no ``service_class.encode`` to wrap)."""
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
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _installed = True
    return True


def pending_pdata(context_id: int, command: bytes, data: bytes, max_pdu: int) -> list[Any]:
    """P-DATA primitives for one message, fragmented as pynetdicom's ``encode_msg`` does
    (PS3.8 E.2: one PDV per P-DATA; message control header 0x01/0x03 for command fragments,
    0x00/0x02 for data set fragments, the second value marking the last one)."""
    from pynetdicom.pdu_primitives import P_DATA

    size = max_pdu - 6 if max_pdu else max(len(command), len(data), 1)
    out = []
    for stream, more, last in ((command, b"\x01", b"\x03"), (data, b"\x00", b"\x02")):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)] or [b""]
        for n, chunk in enumerate(chunks):
            pdata = P_DATA()
            flag = last if n == len(chunks) - 1 else more
            pdata.presentation_data_value_list.append((context_id, flag + chunk))
            out.append(pdata)
    return out


def _install_pending_fast_path() -> None:
    """Send Pending C-FIND responses without rebuilding their command set each time.

    Every Pending response of one C-FIND has the same command set (SOP class, message ID
    responded to, status, data set present): pynetdicom builds and encodes it as a pydicom
    dataset per answer, about 40 % of a streamed C-FIND. It is built once per C-FIND here,
    by pynetdicom's own code, and reused. Other messages, and all messages while pynetdicom
    logs at debug level, take pynetdicom's own path.
    """
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode as pynetdicom_encode

    original = DIMSEServiceProvider.send_msg
    dimse_logger = logging.getLogger("pynetdicom")

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_FIND)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == 0xFF00
            and primitive.Identifier is not None
            and not dimse_logger.isEnabledFor(logging.DEBUG)
        ):
            key = (context_id, primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID)
            cache = self.__dict__.setdefault("_wlmserver_pending_command", {})
            command = cache.get(key)
            if command is None:
                message = C_FIND_RSP()
                message.primitive_to_message(primitive)
                command = pynetdicom_encode(message.command_set, True, True)
                cache.clear()
                cache[key] = command
            data = primitive.Identifier.getvalue()
            for pdata in pending_pdata(context_id, command, data, self.maximum_pdu_size):
                self.dul.send_pdu(pdata)
            return
        original(self, primitive, context_id)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
