"""Parsing worklist files directly: a half-written file is never served (every cut inside an
element is detected), transfer syntaxes, character sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_wl
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from wlmserver.store.dicomfile import MAX_NESTING, Incomplete, Undecodable, parse
from wlmserver.store.files import WorklistFileError
from wlmserver.store.wlfile import read_worklist_file


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_only_cuts_at_trailing_element_boundaries_survive(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset(sps=[{"Modality": "CT"}, {"Modality": "MR"}])
    path = write_wl(tmp_path / "full.wl", ds)
    if syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    trailing = sum(1 for elem in ds if elem.tag > 0x00400100)  # elements after the SPS
    cut_path = tmp_path / "cut.wl"
    served = []
    for size in range(1, len(data)):
        cut_path.write_bytes(data[:size])
        try:
            read_worklist_file(cut_path)
        except WorklistFileError:
            continue
        served.append(size)
    # a prefix can only pass as complete when it ends exactly after one of the trailing
    # top-level elements; the close-write/rename rule of the watcher covers those
    assert len(served) <= trailing
    assert len(read_worklist_file(path).entries) == 2


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"\x10\x00\x20\x00LO\x06\x00AB", "value of (0010,0020)"),
        (b"\x10\x00\x20\x00LO", "element header"),
        (b"\x10\x00", "element header"),
        # a sequence of undefined length with an item never closed
        (b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff", "item"),
        # a sequence of undefined length never closed
        (b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff", "element header"),
    ],
)
def test_incomplete_streams(data: bytes, where: str) -> None:
    with pytest.raises(Incomplete, match=where.replace("(", r"\(").replace(")", r"\)")):
        parse(data)


def test_complete_stream_with_closed_sequence() -> None:
    closed = (
        b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff"
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        b"\x08\x00\x60\x00CS\x02\x00CT"
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    record, charset = parse(closed)
    (item,) = record.items(0x00400100)
    assert item.text(0x00080060) == ("CT",) and charset == ()


def test_transfer_syntaxes_parse_alike(tmp_path: Path) -> None:
    ds = make_dataset(
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        PatientWeight="72.5",
        sps=[{"ScheduledStationAETitle": ["CT01", "CT02"]}],
    )
    ds.add_new(0x00281050, "DS", ["40", "400"])
    ds.add_new(0x00280010, "US", 512)
    records = []
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        path = write_wl(tmp_path / "a.wl", ds)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
        records.append(parse(path.read_bytes()))
    for record, charset in records:
        assert charset == ("ISO_IR 100",)
        assert record.text(0x00100010) == ("Müller^Jürgen",)
        assert record.text(0x00281050) == ("40", "400")
        assert record.text(0x00280010) == ("512",)
        (item,) = record.items(0x00400100)
        assert item.text(0x00400001) == ("CT01", "CT02")
    assert [list(r) for r, _ in records[1:]] == [list(records[0][0])] * 2


def test_iso_2022_japanese(tmp_path: Path) -> None:
    ds = make_dataset(
        SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="Yamada^Tarou=山田^太郎"
    )
    record, charset = parse(write_wl(tmp_path / "j.wl", ds).read_bytes())
    # the empty first value (the default repertoire) is kept: it is what makes an encoder
    # return to ASCII before '^' and '=' (the differential run found answers garbled without)
    assert charset == ("", "ISO 2022 IR 87")
    assert record.text(0x00100010) == ("Yamada^Tarou=山田^太郎",)


def test_iso_2022_japanese_answers_round_trip(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    from wlmserver.matching.answers import CharsetPolicy, build_encoded
    from wlmserver.matching.query import compile_query
    from wlmserver.store.wlfile import read_worklist_file

    ds = make_dataset(
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
    )
    (entry,) = read_worklist_file(write_wl(tmp_path / "j.wl", ds)).entries
    query = Dataset()
    query.PatientName = ""
    answer = build_encoded(compile_query(query), entry, CharsetPolicy.FILE)
    raw = answer.encode(False, True)
    assert b"\x1b(B^" in raw and b"\x1b(B=" in raw  # back to ASCII before each delimiter
    record, charset = parse(raw)  # decoded by pydicom's ISO 2022 decoder
    assert charset == ("", "ISO 2022 IR 87")
    assert record.text(0x00100010) == ("Yamada^Tarou=山田^太郎=やまだ^たろう",)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not DICOM, only text" * 4, "not a DICOM file"),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 999\x10\x00\x10\x00PN\x02\x00AB", "ISO_IR 999"),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192\x10\x00\x10\x00PN\x02\x00A\xff", "decode"),
        (b"\x08\x00\x50\x00SH\x02\x00AB\x10\x00\x10\x00ZZ\x02\x00AB", "invalid VR"),
    ],
)
def test_undecodable(data: bytes, reason: str) -> None:
    with pytest.raises(Undecodable, match=reason):
        parse(data)


def _nested(depth: int) -> bytes:
    """A bare dataset whose sequences (undefined length) nest ``depth`` deep."""
    opening = b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * depth + b"\x08\x00\x60\x00CS\x02\x00CT" + closing * depth


def test_nesting_is_bounded() -> None:
    """600 nested sequences once raised RecursionError (a traceback per event, and a dead
    indexer thread after a restart); now the file is refused with a reason."""
    record, _ = parse(_nested(MAX_NESTING))
    assert len(record.items(0x00400100)) == 1
    with pytest.raises(Undecodable, match="nested more than"):
        parse(_nested(MAX_NESTING + 1))
    with pytest.raises(Undecodable, match="nested more than"):
        parse(_nested(600))


# ------------------------------------------------ the fast ways: tag order, remembered values
def _el(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length."""
    return (
        group.to_bytes(2, "little")
        + element.to_bytes(2, "little")
        + vr
        + len(value).to_bytes(2, "little")
        + value
    )


_NAME = _el(0x0010, 0x0010, b"PN", b"DOE^JOHN")
_ID = _el(0x0010, 0x0020, b"LO", b"PID1")
_SEX = _el(0x0010, 0x0040, b"CS", b"F ")
_MODALITY = _el(0x0008, 0x0060, b"CS", b"CT")


@pytest.mark.parametrize(
    "order",
    [(_MODALITY, _NAME, _ID, _SEX), (_SEX, _ID, _NAME, _MODALITY), (_ID, _MODALITY, _SEX, _NAME)],
)
def test_elements_out_of_tag_order_are_sorted(order: tuple[bytes, ...]) -> None:
    in_order, _ = parse(_MODALITY + _NAME + _ID + _SEX)
    record, _ = parse(b"".join(order))
    assert record == in_order
    assert [tag for tag, _, _ in record] == [0x00080060, 0x00100010, 0x00100020, 0x00100040]
    assert record.text(0x00100040) == ("F",)


def test_repeated_tags_are_kept_as_the_sorting_constructor_keeps_them() -> None:
    from wlmserver.matching.record import Record

    first, second = _el(0x0010, 0x0020, b"LO", b"A1"), _el(0x0010, 0x0020, b"LO", b"B2")
    record, _ = parse(_MODALITY + first + second)
    expected = Record([(0x00080060, "CS", ("CT",)), (0x00100020, "LO", ("A1",))])
    expected = Record([*expected, (0x00100020, "LO", ("B2",))])
    assert list(record) == list(expected)
    assert record.text(0x00100020) == ("B2",)  # the last one, as before


def _with_charset(charset: bytes, *elements: bytes) -> bytes:
    if len(charset) % 2:
        charset += b" "
    return _el(0x0008, 0x0005, b"CS", charset) + b"".join(elements)


@pytest.mark.parametrize(
    ("raw", "charsets"),
    [
        # one byte string, three meanings: Latin-1, UTF-8, not decodable as UTF-8
        (b"M\xc3\xbcller", {b"ISO_IR 100": "MÃ¼ller", b"ISO_IR 192": "Müller"}),
        (b"M\xfcller", {b"ISO_IR 100": "Müller", b"ISO_IR 192": None, b"": "Müller"}),
        # ASCII bytes, but an ISO 2022 escape: JIS X 0208 in IR 87, ESC kept in the default
        (
            b"Yamada=\x1b$B;3ED\x1b(B",
            {b"\\ISO 2022 IR 87": "Yamada=山田", b"": "Yamada=\x1b$B;3ED\x1b(B"},
        ),
    ],
)
def test_a_remembered_value_never_crosses_character_sets(
    raw: bytes, charsets: dict[bytes, str | None]
) -> None:
    """Values are remembered by their bytes only when they decode alike in every character
    set: the same bytes in files of other character sets decode in each file's own."""
    for _ in range(3):  # the first time decodes; the next ones may find remembered values
        for vr in (b"PN", b"LO", b"SH"):
            for charset, text in [*charsets.items(), *reversed(charsets.items())]:
                data = _with_charset(charset, _el(0x0010, 0x0010, vr, raw))
                if text is None:
                    with pytest.raises(Undecodable, match="decode"):
                        parse(data)
                    continue
                record, _ = parse(data)
                assert record.text(0x00100010) == (text,), (vr, charset)


def test_a_remembered_value_in_an_item_with_its_own_character_set() -> None:
    """An SPS item may name its own character set: its text decodes in it, the same bytes at
    the top level in the file's."""
    text = _el(0x0010, 0x0010, b"PN", b"M\xfcller")
    item = _with_charset(b"ISO_IR 192", _el(0x0008, 0x0060, b"LO", b"\xc3\xbc"))
    item_header = b"\xfe\xff\x00\xe0" + len(item).to_bytes(4, "little")
    sps = b"\x40\x00\x00\x01SQ\x00\x00" + (len(item) + 8).to_bytes(4, "little")
    for _ in range(2):
        record, charset = parse(
            _with_charset(b"ISO_IR 100", text, _el(0x0010, 0x0020, b"LO", b"\xc3\xbc"))
            + sps
            + item_header
            + item
        )
        assert charset == ("ISO_IR 100",)
        assert record.text(0x00100010) == ("Müller",)
        assert record.text(0x00100020) == ("Ã¼",)
        (sps_item,) = record.items(0x00400100)
        assert sps_item.text(0x00080060) == ("ü",)


def test_known_headers_still_find_every_cut() -> None:
    """A header seen before is read by one look-up; a value cut short after it is still
    reported where it ends (and a header cut short, too)."""
    whole = _MODALITY + _ID
    parse(whole)  # the headers are known now
    with pytest.raises(Incomplete, match=r"the value of \(0010,0020\) at byte 18"):
        parse(whole[:-1])
    with pytest.raises(Incomplete, match="an element header at byte 10"):
        parse(whole[:15])
    # the same header bytes in implicit VR data mean something else: not looked up there
    implicit = b"\x10\x00\x20\x00\x04\x00\x00\x00PID1"
    assert parse(implicit)[0].text(0x00100020) == ("PID1",)


def test_remembered_values_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from wlmserver.store import dicomfile

    monkeypatch.setattr(dicomfile, "_MEMO_LIMIT", 8)
    monkeypatch.setattr(dicomfile, "_HEADERS_LIMIT", 4)
    for n in range(40):
        value = f"ID{n:04d}".encode()
        data = _el(0x0010, 0x0020, b"LO", value) + _el(0x0010, 0x0021, b"LO", b"X" * (n % 7))
        for _ in range(2):
            record, _ = parse(data)
            assert record.text(0x00100020) == (value.decode(),)
            assert record.text(0x00100021) == (("X" * (n % 7),) if n % 7 else ())
        assert len(dicomfile._MEMO) <= 8 and len(dicomfile._HEADERS) <= 4


def _sps_with_item(*elements: bytes) -> bytes:
    """An SPS sequence of one item (explicit lengths) holding these elements."""
    item = b"".join(elements)
    item_header = b"\xfe\xff\x00\xe0" + len(item).to_bytes(4, "little")
    return (
        b"\x40\x00\x00\x01SQ\x00\x00" + (len(item) + 8).to_bytes(4, "little") + item_header + item
    )


def test_a_remembered_item_is_shared_and_parses_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code items of a RIS repeat from file to file: an item's record is remembered by its
    bytes and shared (records are immutable), and is what parsing it gives."""
    from wlmserver.store import dicomfile

    code = _sps_with_item(_el(0x0008, 0x0100, b"SH", b"CT003 "), _MODALITY)
    first, _ = parse(_NAME + _ID + code)
    second, _ = parse(_NAME + _el(0x0010, 0x0020, b"LO", b"PID2") + code)
    assert second.items(0x00400100)[0] is first.items(0x00400100)[0]
    monkeypatch.setattr(dicomfile, "_ITEMS", {})
    fresh, _ = parse(_NAME + _ID + code)
    assert fresh == first and fresh.items(0x00400100)[0] is not first.items(0x00400100)[0]


def test_an_item_is_remembered_only_when_it_decodes_alike_and_holds_no_sequence() -> None:
    """Item bytes that are not ASCII decode in each file's character set; an item holding a
    sequence is parsed every time (its nesting is checked every time)."""
    latin = _sps_with_item(_el(0x0040, 0x0007, b"LO", b"M\xfcller"))
    for _ in range(2):
        record, _ = parse(_with_charset(b"ISO_IR 100") + latin)
        assert record.items(0x00400100)[0].text(0x00400007) == ("Müller",)
        with pytest.raises(Undecodable, match="decode"):
            parse(_with_charset(b"ISO_IR 192") + latin)
    from wlmserver.store import dicomfile

    empty_sequence = b"\x40\x00\x08\x00SQ\x00\x00" + bytes(4)  # ASCII bytes, yet a sequence
    item = _MODALITY + empty_sequence
    parse(_sps_with_item(item))
    assert item not in dicomfile._ITEMS
    parse(_sps_with_item(_MODALITY))
    assert _MODALITY in dicomfile._ITEMS


def test_remembered_items_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from wlmserver.store import dicomfile

    monkeypatch.setattr(dicomfile, "_ITEMS", {})
    monkeypatch.setattr(dicomfile, "_ITEMS_LIMIT", 4)
    for n in range(20):
        value = f"C{n:03d}".encode()
        record, _ = parse(_ID + _sps_with_item(_el(0x0008, 0x0100, b"SH", value)))
        assert record.items(0x00400100)[0].text(0x00080100) == (value.decode(),)
        assert len(dicomfile._ITEMS) <= 4
