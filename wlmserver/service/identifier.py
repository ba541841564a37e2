"""A C-FIND identifier checked before it is decoded: its size, its deflate stream, and its
encoding (every element, item and sequence length fits; PS3.5 7.1, 7.5)."""

from __future__ import annotations

import contextlib
import struct
import zlib
from typing import Any

from pydicom.datadict import dictionary_VR

from wlmserver.config import Config
from wlmserver.matching.status import Status

_SQ_OR_LONG_VR = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


def encoding_problem(data: bytes, implicit: bool, little: bool) -> str | None:
    """What makes an encoded data set unreadable, or None (PS3.5 7.1, 7.5).

    pydicom reads a data set leniently: an element whose length runs past the end is read
    short, random bytes are read as implicit VR; the query then matched what was left. This
    walks the elements, items and sequences and checks that every length fits.

    Examples
    --------
    >>> encoding_problem(bytes.fromhex("10002000") + b"LO" + bytes.fromhex("0200") + b"P1",
    ...                  False, True) is None
    True
    >>> encoding_problem(bytes.fromhex("10002000") + b"LO" + bytes.fromhex("4000") + b"P1",
    ...                  False, True)
    'element (0010,0020) runs past the end'
    """
    order = "<" if little else ">"
    u16, u32 = struct.Struct(order + "H"), struct.Struct(order + "L")

    def walk(pos: int, end: int, in_item: bool, depth: int) -> tuple[int, str | None]:
        if depth > 16:
            return pos, "sequences nested too deep"
        while pos < end:
            if end - pos < 8:
                return pos, "an element header is cut short"
            tag = (u16.unpack_from(data, pos)[0] << 16) | u16.unpack_from(data, pos + 2)[0]
            where = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if tag == _ITEM_END and in_item:
                return pos + 8, None
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                return pos, f"{where} out of place"
            vr = b""
            if implicit:
                length, pos = u32.unpack_from(data, pos + 4)[0], pos + 8
                with contextlib.suppress(KeyError):
                    vr = dictionary_VR(tag).encode()
            else:
                vr = data[pos + 4 : pos + 6]
                if not (vr.isalpha() and vr.isupper()):
                    return pos, f"{where} has no valid VR"
                if vr in _SQ_OR_LONG_VR:
                    if end - pos < 12:
                        return pos, "an element header is cut short"
                    length, pos = u32.unpack_from(data, pos + 8)[0], pos + 12
                else:
                    length, pos = u16.unpack_from(data, pos + 6)[0], pos + 8
            if vr == b"SQ" or (length == _UNDEFINED and vr in (b"UN", b"")):
                pos, problem = items(
                    pos, end if length == _UNDEFINED else pos + length, length, depth
                )
                if problem:
                    return pos, problem
                continue
            if length == _UNDEFINED:
                return pos, f"{where} has an undefined length"
            if pos + length > end:
                return pos, f"{where} runs past the end"
            pos += length
        return pos, ("an item has no end" if in_item else None)

    def items(pos: int, end: int, length: int, depth: int) -> tuple[int, str | None]:
        if length != _UNDEFINED and end > len(data):
            return pos, "a sequence runs past the end"
        while pos < end:
            if end - pos < 8:
                return pos, "an item header is cut short"
            tag = (u16.unpack_from(data, pos)[0] << 16) | u16.unpack_from(data, pos + 2)[0]
            item_length = u32.unpack_from(data, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_END and length == _UNDEFINED:
                return pos, None
            if tag != _ITEM:
                return pos, "a sequence holds a non-item"
            if item_length == _UNDEFINED:
                pos, problem = walk(pos, end, True, depth + 1)
            elif pos + item_length > end:
                return pos, "an item runs past its sequence"
            else:
                _, problem = walk(pos, pos + item_length, False, depth + 1)
                pos += item_length
            if problem:
                return pos, problem
        if length == _UNDEFINED:
            return pos, "a sequence has no end"
        return pos, None

    return walk(0, len(data), False, 0)[1]


def identifier_bytes(event: Any) -> tuple[bytes, Any] | None:
    """The encoded identifier of a C-FIND request and its transfer syntax, or None (a
    stand-in event)."""
    try:
        identifier = event.request.Identifier
        syntax = event.context.transfer_syntax
    except AttributeError:
        return None
    getvalue = getattr(identifier, "getvalue", None)
    return None if getvalue is None else (bytes(getvalue()), syntax)


def refused_before_decoding(event: Any, config: Config) -> tuple[Status, str] | None:
    """A status and comment for an identifier refused before it is decoded, or None."""
    encoded = identifier_bytes(event)
    if encoded is None:
        return None
    data, syntax = encoded
    if len(data) > config.max_identifier_size:
        return (
            Status.UNABLE_TO_PROCESS,
            f"identifier over {config.max_identifier_size} bytes (--max-identifier-size)",
        )
    from pydicom.uid import UID

    uid = UID(syntax)
    if uid.is_deflated:
        try:
            inflated = inflate(data, config.max_identifier_size)
        except zlib.error:
            return Status.UNABLE_TO_PROCESS, "undecodable identifier: not a deflate stream"
        if inflated is None:
            return (
                Status.UNABLE_TO_PROCESS,
                f"identifier over {config.max_identifier_size} bytes inflated "
                "(--max-identifier-size)",
            )
        data = inflated
    elif not uid.is_transfer_syntax:
        return None
    problem = encoding_problem(data, bool(uid.is_implicit_VR), bool(uid.is_little_endian))
    if problem:
        return Status.UNABLE_TO_PROCESS, f"undecodable identifier: {problem}"
    return None


def inflate(data: bytes, limit: int) -> bytes | None:
    """A deflated data set (PS3.5 A.5) inflated, or None if it is longer than ``limit`` bytes
    (a few KiB of deflated zeros inflate to many MiB: this never holds more than the limit).

    Raises
    ------
    zlib.error
        Not a raw deflate stream, or one cut short.

    Examples
    --------
    >>> import zlib
    >>> packed = zlib.compress(bytes(100_000), wbits=-zlib.MAX_WBITS)
    >>> len(inflate(packed, 100_000)), inflate(packed, 65536)
    (100000, None)
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        return None
    if not inflater.eof:
        raise zlib.error("the deflate stream is cut short")
    return out
