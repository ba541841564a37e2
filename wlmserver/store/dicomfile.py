"""Parse a worklist file's bytes into a :class:`~wlmserver.matching.record.Record`, checking
it is whole.

A worklist file is small and simple, and the server reads up to hundreds of thousands of
them, so it is parsed here directly (PS3.5 7.1, 7.5, PS3.10 7.1) rather than through pydicom's
general machinery, which costs about ten times the time and memory. Parsing walks every element
header, which is also the check that the file is complete: pydicom reads a truncated file
without complaint (dropping its last element, or keeping a value cut short), so a RIS script
still writing a file must be caught here. Every value must lie inside the file, every sequence
and item of undefined length must be closed, and the data must end on an element boundary.

Text is decoded in the file's Specific Character Set (the item's own, where an item has one);
bytes that do not decode make the file unreadable rather than silently replaced.
"""

from __future__ import annotations

import struct
import sys
import zlib
from functools import lru_cache

from pydicom.charset import decode_bytes, python_encoding
from pydicom.datadict import dictionary_VR

from wlmserver.matching.keys import SINGLE_VALUED_TEXT_VRS
from wlmserver.matching.primitives import normalise_text
from wlmserver.matching.record import Record, Value, Values, layout_for, share

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"

# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_ALL_VRS = _LONG_VRS | _CHARSET_VRS | _ASCII_VRS | frozenset(_NUMBERS) | {"AT"}
_VR_NAMES = {vr.encode("ascii"): vr for vr in _ALL_VRS}
_DELIMITERS = frozenset({_ITEM, _ITEM_END, _SEQUENCE_END})
# element headers, per byte order: implicit (group, element, 32-bit length), explicit (group,
# element, VR, 16-bit length; long VRs have two reserved bytes and a 32-bit length instead)
_IMPLICIT_HEADER = {e: struct.Struct(e + "HHL") for e in "<>"}
_EXPLICIT_HEADER = {e: struct.Struct(e + "HH2sH") for e in "<>"}
_LENGTH = {e: struct.Struct(e + "L") for e in "<>"}
# explicit VR little endian, by far the most common encoding, is read by the dataset loop
# itself (the same checks as _Parser.header, without a call per element)
_EXPLICIT_LE = _EXPLICIT_HEADER["<"].unpack_from
_DELIMITER_LE = _IMPLICIT_HEADER["<"].unpack_from  # a delimiter: tag and 32-bit length
_LENGTH_LE = _LENGTH["<"].unpack_from
_SHORT_VR_NAMES = {raw: vr for raw, vr in _VR_NAMES.items() if vr not in _LONG_VRS}
_ISO_2022 = frozenset(
    name for name in python_encoding if name.startswith("ISO 2022") and name != "ISO 2022 IR 6"
)
_PN_DELIMITERS = {0x5E, 0x3D}
#: Sequences nested deeper than this make a file unreadable. Worklist entries nest a few levels
#: (an SPS item, its protocol code, a code's context); a limit keeps a hostile file from
#: exhausting the parser's recursion.
MAX_NESTING = 32
#: A value (other than a sequence) longer than this makes a file unreadable: a worklist value
#: is at most a few kilobytes (LT: 10,240 characters), and a file with a 100 MB element kept
#: 205 MB in memory while it was served.
MAX_VALUE_LENGTH = 1024 * 1024
#: A deflated file is inflated to at most this many bytes: a worklist entry is a few
#: kilobytes, and a 64 KiB deflate bomb once asked for 128 MiB.
MAX_INFLATED = 4 * 1024 * 1024
_TEXT_DELIMITERS = {0x5C}
#: Decoded values of short elements already seen, by the bytes of their VR, length and value
#: (modalities, stations, dates, times, sexes and empty values repeat from file to file). Only
#: values that decode alike in every character set are kept: those of the VRs always read as
#: ASCII, and text in ASCII without ESC (see :func:`decode_text`); so a value in another
#: character set is always decoded in its own. Cleared when full (a bound, not a policy).
_MEMO: dict[bytes, Values] = {}
_MEMO_LIMIT = 32_768
_MEMO_VALUE = 64  # value bytes at most
# short VRs (a 16-bit length) whose values may repeat; not UI: UIDs are unique
_MEMO_VRS = (_CHARSET_VRS | _ASCII_VRS) - _LONG_VRS - {"UI"}
#: Item records already seen, by the bytes of the item (explicit VR little endian, a defined
#: length): the code items of a RIS's procedures and protocols repeat from file to file, and
#: records are immutable, so one is shared. Only items of ASCII text without ESC (decoded
#: alike in every character set) and without sequences (no nesting to check) are kept.
_ITEMS: dict[bytes, Record] = {}
_ITEMS_LIMIT = 8_192
_ITEM_MEMO_BYTES = 256
#: Element headers already seen in explicit VR little endian data, by their 8 bytes: ``(tag,
#: VR, length, whether the value may be remembered)``. Only headers of plain elements are kept
#: (a short VR; not a delimiter, group length, file meta or Specific Character Set), which the
#: dataset loop reads with one look-up; any other header takes the full way.
_HEADERS: dict[bytes, tuple[int, str, int, bool]] = {}
_HEADERS_LIMIT = 16_384


class Incomplete(ValueError):
    """The bytes end before their structure does (the message says where)."""


class Undecodable(ValueError):
    """The data is not DICOM, or its text does not decode (the message says why)."""


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str:
    """The VR of a tag in implicit VR data: from the dictionary, ``UN`` when unknown."""
    if (tag >> 16) % 2 == 1:
        return "UN"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Parser:
    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.e = "<" if little else ">"
        self.fast = little and not implicit
        self.depth = 0

    def need(self, pos: int, size: int, what: str) -> None:
        if pos + size > len(self.data):
            raise Incomplete(f"the file ends inside {what} at byte {pos}")

    def header(self, pos: int, implicit: bool, e: str) -> tuple[int, str, int, int]:
        """Read an element header: ``(tag, vr, length, value position)``."""
        data = self.data
        if pos + 8 > len(data):
            self.need(pos, 8, "an element header")
        if implicit:
            group, element, length = _IMPLICIT_HEADER[e].unpack_from(data, pos)
            tag = (group << 16) | element
            if tag in _DELIMITERS:
                return tag, "", length, pos + 8
            vr = "SQ" if length == _UNDEFINED else implicit_vr(tag)
            return tag, vr, length, pos + 8
        group, element, vr_bytes, length = _EXPLICIT_HEADER[e].unpack_from(data, pos)
        tag = (group << 16) | element
        if tag in _DELIMITERS:
            (length,) = _LENGTH[e].unpack_from(data, pos + 4)
            return tag, "", length, pos + 8
        explicit_vr = _VR_NAMES.get(vr_bytes)
        if explicit_vr is None:
            raise Undecodable(f"{_name(tag)} has an invalid VR {vr_bytes.decode('latin-1')!r}")
        vr = explicit_vr
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                self.need(pos, 12, _name(tag))
            (length,) = _LENGTH[e].unpack_from(data, pos + 8)
            return tag, vr, length, pos + 12
        return tag, vr, length, pos + 8

    def meta(self, pos: int) -> tuple[int, str]:
        """Skip the file meta group (always explicit VR little endian); return the position
        after it and the transfer syntax it names."""
        syntax = ""
        data = self.data
        size = len(data)
        while pos + 8 <= size:
            group, element, vr_bytes, length = _EXPLICIT_LE(data, pos)
            if group != 0x0002:
                break
            tag = (group << 16) | element
            if vr_bytes in _SHORT_VR_NAMES:
                value = pos + 8
            else:  # a long VR, or an invalid one: as the header says
                tag, _vr, length, value = self.header(pos, False, "<")
            if value + length > size:
                self.need(value, length, f"the value of {_name(tag)}")
            if tag == _TRANSFER_SYNTAX:
                syntax = data[value : value + length].decode("latin-1").strip("\x00 ")
            pos = value + length
        return pos, syntax

    def dataset(
        self, pos: int, end: int | None, encodings: list[str]
    ) -> tuple[Record, int, list[str]]:
        """Parse elements up to ``end`` (or an item delimiter when ``end`` is None)."""
        tags: list[int] = []
        vrs: list[str] = []
        values: list[Value] = []
        add_tag, add_vr, add_value = tags.append, vrs.append, values.append
        data, header, value_of = self.data, self.header, self.value
        implicit, e, size, fast = self.implicit, self.e, len(self.data), self.fast
        # module constants as locals: this loop runs once per element of every file
        explicit_le, short_vrs, delimiters = _EXPLICIT_LE, _SHORT_VR_NAMES, _DELIMITERS
        remember, memo_vrs = _MEMO.get, _MEMO_VRS
        # plain headers are known only in explicit VR little endian
        headers: dict[bytes, tuple[int, str, int, bool]] = _HEADERS if fast else {}
        known_header = headers.get
        undefined, charset_tag = _UNDEFINED, _SPECIFIC_CHARACTER_SET
        last = -1  # the tag before, to tell whether the elements come in tag order
        ordered = True
        # a defined end lies inside the data (the caller checked it): only an item of
        # undefined length can reach the end of the data before its own
        limit = sys.maxsize if end is None else end
        while pos < limit:
            # the common case: a plain element whose header was seen before (fewer than 8
            # bytes left match no header, and take the full way below, which says why)
            plain = known_header(data[pos : pos + 8])
            if plain is not None:
                tag, vr, length, memo_ok = plain
                value_pos = pos + 8
                pos = value_pos + length
                if pos > size:
                    self.need(value_pos, length, f"the value of {_name(tag)}")
                if tag <= last:
                    ordered = False
                last = tag
                add_tag(tag)
                add_vr(vr)
                if memo_ok:
                    key = data[value_pos - 4 : pos]  # VR, length, value
                    known = remember(key)
                    if known is None:
                        known = _remember(key, vr, value_of(tag, vr, key[4:], encodings))
                    add_value(known)
                else:
                    add_value(value_of(tag, vr, data[value_pos:pos], encodings))
                continue
            if pos >= size:
                raise Incomplete("an item of undefined length is not closed")
            if fast:  # explicit VR little endian: what header() does, inline
                if pos + 8 > size:
                    raise Incomplete(f"the file ends inside an element header at byte {pos}")
                group, element, vr_bytes, length = explicit_le(data, pos)
                tag = (group << 16) | element
                found = short_vrs.get(vr_bytes)
                if found is not None and group != 0xFFFE:
                    vr = found
                    value_pos = pos + 8
                elif tag in delimiters:
                    if tag == _ITEM_END:
                        return _record(tags, vrs, values, ordered), pos + 8, encodings
                    raise Undecodable(f"unexpected {_name(tag)} at byte {pos}")
                else:
                    found = _VR_NAMES.get(vr_bytes)
                    if found is None:
                        raise Undecodable(
                            f"{_name(tag)} has an invalid VR {vr_bytes.decode('latin-1')!r}"
                        )
                    vr = found
                    if vr in _LONG_VRS:
                        if pos + 12 > size:
                            raise Incomplete(f"the file ends inside {_name(tag)} at byte {pos}")
                        (length,) = _LENGTH_LE(data, pos + 8)
                        value_pos = pos + 12
                    else:
                        value_pos = pos + 8
            else:
                tag, vr, length, value_pos = header(pos, implicit, e)
                if tag == _ITEM_END:
                    return _record(tags, vrs, values, ordered), value_pos, encodings
                if tag in delimiters:
                    raise Undecodable(f"unexpected {_name(tag)} at byte {pos}")
            if length == undefined:
                if vr not in ("SQ", "UN"):
                    raise Undecodable(f"{_name(tag)} ({vr}) has an undefined length")
                if tag <= last:
                    ordered = False
                last = tag
                items, pos = self.sequence(value_pos, None, encodings, tag)
                add_tag(tag)
                add_vr("SQ")
                add_value(items)
                continue
            pos = value_pos + length
            if pos > size:
                self.need(value_pos, length, f"the value of {_name(tag)}")
            if length > MAX_VALUE_LENGTH and vr != "SQ":
                raise Undecodable(
                    f"{_name(tag)}: a value of {length} bytes, more than the "
                    f"{MAX_VALUE_LENGTH} a worklist value may have"
                )
            if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
                continue  # group lengths; file meta found inside a bare dataset
            if tag <= last:
                ordered = False
            last = tag
            add_tag(tag)
            add_vr(vr)
            # a plain element (a short VR, so an 8-byte header): read faster the next time
            if fast and vr not in _LONG_VRS and tag != charset_tag and tag >> 16 != 0xFFFE:
                if len(_HEADERS) >= _HEADERS_LIMIT:
                    _HEADERS.clear()
                memo_ok = length <= _MEMO_VALUE and vr in memo_vrs
                _HEADERS[data[value_pos - 8 : value_pos]] = (tag, vr, length, memo_ok)
            if vr == "SQ":
                add_value(self.sequence(value_pos, pos, encodings, tag)[0])
            elif tag == charset_tag:
                names = charset_values(data[value_pos:pos])
                encodings = charset_encodings(names)
                add_value(names)
            else:
                add_value(value_of(tag, vr, data[value_pos:pos], encodings))
        return _record(tags, vrs, values, ordered), pos, encodings

    def sequence(
        self, pos: int, end: int | None, encodings: list[str], seq: int
    ) -> tuple[tuple[Record, ...], int]:
        if self.depth >= MAX_NESTING:
            raise Undecodable(f"{_name(seq)}: sequences nested more than {MAX_NESTING} deep")
        self.depth += 1
        try:
            return self._items(pos, end, encodings, seq)
        finally:
            self.depth -= 1

    def _items(
        self, pos: int, end: int | None, encodings: list[str], seq: int
    ) -> tuple[tuple[Record, ...], int]:
        items: list[Record] = []
        data, size, fast = self.data, len(self.data), self.fast
        while end is None or pos < end:
            tag = -1
            if fast and pos + 8 <= size:  # an item or delimiter tag: read here
                group, element, length = _DELIMITER_LE(data, pos)
                tag = (group << 16) | element
                value_pos = pos + 8
            if tag not in _DELIMITERS:
                tag, _vr, length, value_pos = self.header(pos, self.implicit, self.e)
            if tag == _SEQUENCE_END:
                if end is not None:
                    raise Undecodable(
                        f"{_name(seq)}: sequence delimiter in a defined-length sequence"
                    )
                return tuple(items), value_pos
            if tag != _ITEM:
                raise Undecodable(f"{_name(seq)}: expected an item, found {_name(tag)}")
            if length == _UNDEFINED:
                item, pos, _ = self.dataset(value_pos, None, encodings)
            else:
                item_end = value_pos + length
                if item_end > size:
                    self.need(value_pos, length, f"an item of {_name(seq)}")
                if fast and length <= _ITEM_MEMO_BYTES:
                    raw = data[value_pos:item_end]
                    known = _ITEMS.get(raw)
                    if known is not None:
                        items.append(known)
                        pos = item_end
                        continue
                    item, pos, _ = self.dataset(value_pos, item_end, encodings)
                    if pos == item_end and raw.isascii() and b"\x1b" not in raw:
                        _remember_item(raw, item)
                else:
                    item, pos, _ = self.dataset(value_pos, item_end, encodings)
            items.append(item)
        if end is None:
            raise Incomplete(f"{_name(seq)}: a sequence of undefined length is not closed")
        return tuple(items), pos

    def value(self, tag: int, vr: str, raw: bytes, encodings: list[str]) -> Values:
        if vr in _CHARSET_VRS:
            return _split(decode_text(raw, vr, encodings, tag), vr)
        if vr in _ASCII_VRS:
            return _split(raw.decode("latin-1").replace("\x00", ""), vr)
        if vr in _NUMBERS:
            code = _NUMBERS[vr]
            count = len(raw) // struct.calcsize(code)
            numbers = struct.unpack_from(f"{self.e}{count}{code}", raw)
            return tuple(str(n) for n in numbers)
        if vr == "AT":
            pairs = struct.unpack_from(f"{self.e}{len(raw) // 2}H", raw)
            return tuple(f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs) - 1, 2))
        return (raw.hex(),) if raw else ()


def _remember(key: bytes, vr: str, values: Values) -> Values:
    """Keep the decoded value of an element (by the bytes of its VR, length and value) when
    it decodes alike in every character set (see ``_MEMO``); return it."""
    raw = key[4:]
    if vr in _ASCII_VRS or (raw.isascii() and b"\x1b" not in raw):
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[key] = values
    return values


def _remember_item(raw: bytes, item: Record) -> None:
    """Keep an item's record by its bytes (see ``_ITEMS``) when it holds no sequence."""
    if "SQ" not in item.parts()[0].vrs:
        if len(_ITEMS) >= _ITEMS_LIMIT:
            _ITEMS.clear()
        _ITEMS[raw] = item


def _record(tags: list[int], vrs: list[str], values: list[Value], ordered: bool) -> Record:
    """The record of a dataset's elements: assembled directly when they came in strictly
    increasing tag order (files almost always do), else sorted by :class:`Record`."""
    if ordered:
        return Record.assembled(layout_for(tuple(tags), tuple(vrs)), tuple(values))
    return Record(list(zip(tags, vrs, values, strict=True)))


def _split(text: str, vr: str) -> Values:
    if vr in SINGLE_VALUED_TEXT_VRS or "\\" not in text:  # one value: most of them
        value = normalise_text(vr, text)
        return share((value,)) if value else ()
    return share(tuple(v for v in (normalise_text(vr, p) for p in text.split("\\")) if v))


def charset_values(raw: bytes) -> Values:
    """The values of a Specific Character Set, keeping an empty first value.

    ``\\ISO 2022 IR 87`` means "the default repertoire first, IR 87 by code extension": the
    empty value is what tells an encoder to switch back to ASCII before delimiters, so it is
    kept (other empty values are dropped; a wholly empty value is the default repertoire).

    Examples
    --------
    >>> charset_values(b"\\ISO 2022 IR 87"), charset_values(b"ISO_IR 100 "), charset_values(b"")
    (('', 'ISO 2022 IR 87'), ('ISO_IR 100',), ())
    """
    values = [v.strip(" \x00") for v in raw.decode("latin-1").split("\\")]
    if not any(values):
        return ()
    return share((values[0], *(v for v in values[1:] if v)))


def charset_encodings(names: Values) -> list[str]:
    """Python codecs for Specific Character Set values; raises :class:`Undecodable`.

    An empty first value stands for the default repertoire (ISO IR 6).
    """
    encodings = []
    for name in names or ("",):
        name = name.strip() or "ISO_IR 6"
        if name == "ISO 2022 IR 6":
            name = "ISO_IR 6"
        codec = python_encoding.get(name)
        if codec is None:
            raise Undecodable(f"unknown Specific Character Set {name!r}")
        encodings.append(codec if name not in _ISO_2022 else name)
    return encodings


def decode_text(raw: bytes, vr: str, encodings: list[str], tag: int = 0) -> str:
    """Decode a text value strictly in its character set.

    Raises
    ------
    Undecodable
        The bytes are not valid in the character set.
    """
    if raw.isascii() and b"\x1b" not in raw:  # ESC starts an ISO 2022 code extension
        return raw.decode("ascii")
    if len(encodings) == 1 and encodings[0] not in _ISO_2022:
        codec = "latin_1" if encodings[0] == "iso8859" else encodings[0]
        try:
            return raw.decode(codec)
        except UnicodeDecodeError as exc:
            raise Undecodable(
                f"{_name(tag)} does not decode as {encodings[0]} ({exc.reason} at byte {exc.start})"
            ) from None
    codecs = [python_encoding.get(e, e) for e in encodings]
    delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
    return decode_bytes(raw, codecs, delimiters)


def parse(data: bytes) -> tuple[Record, tuple[str, ...]]:
    """Parse a whole file (Part 10, or a bare dataset as wlmscpfs also accepts).

    Returns
    -------
    record : Record
        The dataset (without its file meta group).
    charset : tuple of str
        Its Specific Character Set values (empty for the default repertoire).

    Raises
    ------
    Incomplete
        The file ends before its structure does (still being written?).
    Undecodable
        Not DICOM, an invalid VR, or text that does not decode.

    Examples
    --------
    >>> record, charset = parse(b"\\x10\\x00\\x20\\x00LO\\x04\\x00AB12")
    >>> record.text(0x00100020), charset
    (('AB12',), ())
    >>> parse(b"\\x10\\x00\\x20\\x00LO\\x04\\x00AB")
    Traceback (most recent call last):
    ...
    wlmserver.store.dicomfile.Incomplete: the file ends inside the value of (0010,0020) at byte 8
    """
    part10 = data[128:132] == b"DICM"
    start = 132 if part10 else 0
    probe = _Parser(data, False, True)
    pos, syntax = probe.meta(start)
    if not syntax:
        if part10:
            raise Undecodable("the file meta information names no transfer syntax")
        # a bare dataset: explicit VR if a VR follows the first tag, else implicit
        syntax = _IMPLICIT_LE if data[pos + 4 : pos + 6].decode("latin-1") not in _ALL_VRS else ""
    if syntax == _DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:  # bounded: a small deflated file can claim gigabytes (a deflate bomb)
            body = inflater.decompress(data[pos:], MAX_INFLATED)
        except zlib.error as exc:
            raise Incomplete(f"the deflated data does not inflate ({exc})") from None
        if inflater.unconsumed_tail:
            raise Undecodable(f"the deflated data inflates to more than {MAX_INFLATED} bytes")
        data = data[:pos] + body
    parser = _Parser(data, syntax == _IMPLICIT_LE, syntax != _EXPLICIT_BE)
    if not part10 and pos == 0 and len(data) >= 8:
        first = parser.header(0, parser.implicit, parser.e)[0]
        if first >> 16 != 0x0008 and implicit_vr(first) == "UN":
            raise Undecodable("not a DICOM file")
    record, _, _ = parser.dataset(pos, len(data), charset_encodings(()))
    return record, record.text(_SPECIFIC_CHARACTER_SET)
