"""Entries: tuples underneath (made in C by the index cache), yet each equal only to itself."""

from __future__ import annotations

from wlmserver.matching.entry import Entry, entries_from_rows
from wlmserver.matching.record import Record


def _row(name: str) -> tuple[str, int, Record, Record, tuple[str, ...], tuple[str, str, int]]:
    top = Record([(0x00100020, "LO", ("PID1",))])
    sps = Record([(0x00080060, "CS", ("CT",))])
    return (f"/db/WLM/{name}", 0, top, sps, (), ("202612021000", name, 0))


def test_entries_alike_are_still_two_entries() -> None:
    one, other = Entry(*_row("a.wl")), Entry(*_row("a.wl"))
    assert one == one and one != other
    assert len({one, other}) == 2 and {one: 1}[one] == 1
    assert [one].count(other) == 0 and other not in [one]
    assert (one,) != (other,) and (one,) == (one,)


def test_fields_and_entries_made_from_rows() -> None:
    row = _row("b.wl")
    entry, made = Entry(*row), entries_from_rows([row])[0]
    assert type(made) is Entry
    for e in (entry, made):
        assert (e.path, e.item, e.top, e.sps, e.charset, e.order) == row
        assert e.top.PatientID == "PID1" and e.sps.Modality == "CT"
    assert "b.wl" in repr(made)
