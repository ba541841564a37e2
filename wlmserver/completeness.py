"""Check that a DICOM byte stream is structurally complete: never serve a half-written file.

pydicom reads a truncated file without complaint: it drops the last element, or even keeps a
value cut short (a StudyInstanceUID missing its last digits). A RIS script that is still
writing a ``.wl`` file must never have that served, so before a file is parsed its element
headers are walked (PS3.5 7.1, 7.5): every value must lie inside the file, every sequence and
item of undefined length must be closed by its delimiter, and the stream must end on an
element boundary.
"""

from __future__ import annotations

import struct

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}


class Incomplete(ValueError):
    """The byte stream ends before its structure does (the message says where)."""


class _Walker:
    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.endian = "<" if little else ">"

    def _need(self, pos: int, size: int, what: str) -> None:
        if pos + size > len(self.data):
            raise Incomplete(f"the file ends inside {what} at byte {pos}")

    def _tag(self, pos: int, little: str) -> int:
        self._need(pos, 4, "an element tag")
        group, element = struct.unpack_from(little + "HH", self.data, pos)
        return int((group << 16) | element)

    def elements(self, pos: int, end: int | None, *, meta_only: bool = False) -> int:
        """Walk elements from ``pos`` to ``end`` (or an item delimiter when ``end`` is None)."""
        while end is None or pos < end:
            if end is None and pos >= len(self.data):
                raise Incomplete("an item of undefined length is not closed")
            endian = "<" if meta_only else self.endian
            tag = self._tag(pos, endian)
            if meta_only and tag >> 16 != 0x0002:
                return pos
            if tag == _ITEM_END:
                self._need(pos, 8, "an item delimiter")
                return pos + 8
            implicit = self.implicit and not meta_only
            name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if implicit:
                self._need(pos, 8, name)
                (length,) = struct.unpack_from(endian + "L", self.data, pos + 4)
                vr = b""
                pos += 8
            else:
                self._need(pos, 6, name)
                vr = self.data[pos + 4 : pos + 6]
                if vr in _LONG_VRS:
                    self._need(pos, 12, name)
                    (length,) = struct.unpack_from(endian + "L", self.data, pos + 8)
                    pos += 12
                else:
                    self._need(pos, 8, name)
                    (length,) = struct.unpack_from(endian + "H", self.data, pos + 6)
                    pos += 8
            if length == _UNDEFINED:
                pos = self.sequence(pos, name)
            else:
                self._need(pos, length, f"the value of {name}")
                pos += length
        return pos

    def sequence(self, pos: int, name: str) -> int:
        """Walk the items of a sequence of undefined length up to its delimiter."""
        while True:
            tag = self._tag(pos, self.endian)
            self._need(pos, 8, f"an item of {name}")
            (length,) = struct.unpack_from(self.endian + "L", self.data, pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise Incomplete(
                    f"{name}: expected an item, found ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
            if length == _UNDEFINED:
                pos = self.elements(pos, None)
            else:
                self._need(pos, length, f"an item of {name}")
                pos += length


def check_complete(data: bytes, *, implicit: bool, little: bool) -> None:
    """Raise :class:`Incomplete` unless ``data`` holds a structurally complete DICOM stream.

    Parameters
    ----------
    data : bytes
        A whole file: Part 10 (preamble, ``DICM``, file meta) or a bare dataset.
    implicit, little : bool
        The dataset's transfer syntax (the file meta group is always explicit little endian).

    Examples
    --------
    >>> check_complete(b"\\x10\\x00\\x20\\x00LO\\x04\\x00AB12", implicit=False, little=True)
    >>> check_complete(b"\\x10\\x00\\x20\\x00LO\\x04\\x00AB", implicit=False, little=True)
    Traceback (most recent call last):
    ...
    wlmserver.completeness.Incomplete: the file ends inside the value of (0010,0020) at byte 8
    """
    walker = _Walker(data, implicit, little)
    pos = 132 if data[128:132] == b"DICM" else 0
    pos = walker.elements(pos, len(data), meta_only=True)
    walker.elements(pos, len(data))
