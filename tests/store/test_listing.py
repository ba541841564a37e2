"""Listings: made ahead in a child process, they say exactly what a listing made in the
process says; when the child cannot run, the scan lists for itself."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import write_wl

from wlmserver.store import listing as listing_module
from wlmserver.store.formats import Formats
from wlmserver.store.index import WorklistStore
from wlmserver.store.listing import Listing, ListingsAhead


@pytest.fixture
def odd_folder(db: Path) -> Path:
    """A folder with served files, files not served, a folder, and a broken link."""
    folder = db / "WLM"
    write_wl(folder / "b.wl", PatientID="PIDB")
    write_wl(folder / "a.wl", PatientID="PIDA")
    (folder / "notes.txt").write_text("not served")
    (folder / "sub.wl").mkdir()
    (folder / "broken.wl").symlink_to(folder / "nowhere.wl")
    (folder / "lockfile").write_bytes(b"")
    for odd in (".a.wl", "A.WL", ".wl", "~a.wl", "#a.wl", "a.wl.tmp", "a.json", "B.Json", "x.js"):
        (folder / odd).write_bytes(b"")
    write_wl(db / "CT01" / "c.wl", PatientID="PIDC")
    return db


RULE = Formats.chosen(json_drops=True).rule
_serves = Formats.chosen(json_drops=True).serves


def test_a_listing_made_ahead_says_what_one_made_here_says(odd_folder: Path) -> None:
    ahead = ListingsAhead(odd_folder, ["WLM", "CT01", "GONE"], RULE)
    for name in ("WLM", "CT01"):
        made = ahead.take(name)
        here = Listing.of(odd_folder / name, _serves)
        assert made is not None and made.signatures is not None
        assert made.names == here.names
        assert {n: made.signature(n) for n in made.names} == {
            n: here.signature(n) for n in here.names
        }
    assert ahead.take("WLM") is None  # taken once
    assert ahead.take("GONE") is None  # cannot be listed: the scan finds out itself
    wlm = Listing.of(odd_folder / "WLM", _serves)
    assert wlm.names == ["A.WL", "B.Json", "a.json", "a.wl", "b.wl", "broken.wl", "sub.wl"]
    assert wlm.signature("broken.wl") is None  # a broken link cannot be stat'ed
    assert wlm.signature("sub.wl") is not None  # read, and refused with a reason


def test_a_signature_made_ahead_is_the_file_as_it_was(odd_folder: Path) -> None:
    ahead = ListingsAhead(odd_folder, ["WLM"], RULE)
    made = ahead.take("WLM")
    assert made is not None
    path = odd_folder / "WLM" / "a.wl"
    before = made.signature("a.wl")
    write_wl(path, PatientID="PIDA2")
    os.utime(path, ns=(1, 1))
    assert made.signature("a.wl") == before  # what it was when listed
    assert Listing.signature_now(path) != before


def test_without_a_child_process_the_scan_lists_for_itself(
    odd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(odd_folder / "no-such-python"))
    ahead = ListingsAhead(odd_folder, ["WLM", "CT01"], RULE)
    assert ahead.take("WLM") is None
    store = WorklistStore(odd_folder)
    store.scan(listings=store.list_ahead())
    wlm = store.folder("WLM")
    assert wlm is not None
    assert sorted(e.top.PatientID for e in wlm.entries) == ["PIDA", "PIDB"]


def test_a_child_that_writes_nonsense_is_not_believed(
    odd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing_module, "_CHILD", "import sys; sys.stdout.write('junk')")
    assert ListingsAhead(odd_folder, ["WLM"], RULE).take("WLM") is None


def test_a_scan_from_listings_made_ahead_equals_one_without(odd_folder: Path) -> None:
    plain = WorklistStore(odd_folder)
    plain.scan()
    ahead = WorklistStore(odd_folder)
    ahead.scan(listings=ahead.list_ahead())
    for name in ("WLM", "CT01"):
        one, other = plain.folder(name), ahead.folder(name)
        assert one is not None and other is not None
        assert dict(one.files).keys() == dict(other.files).keys()
        assert [(e.path, list(e.top), list(e.sps)) for e in one.entries] == [
            (e.path, list(e.top), list(e.sps)) for e in other.entries
        ]


def test_a_listing_made_ahead_can_be_cancelled(
    odd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without a usable cache reads every folder whole and needs no listing made
    ahead: the child is stopped (here one that would take a minute), and gives nothing."""
    monkeypatch.setattr(listing_module, "_CHILD", "import time; time.sleep(60)")
    ahead = ListingsAhead(odd_folder, ["WLM"], RULE)
    deadline = time.monotonic() + 20
    while ahead._process is None and time.monotonic() < deadline:  # the child runs
        time.sleep(0.02)
    assert ahead._process is not None
    ahead.cancel()
    assert ahead._process.returncode == -signal.SIGKILL  # stopped, not waited for
    assert ahead.take("WLM") is None
    monkeypatch.undo()
    done = ListingsAhead(odd_folder, ["WLM"], RULE)
    done.take("CT01")  # finished: cancelling is harmless
    done.cancel()
    assert done.take("WLM") is None
