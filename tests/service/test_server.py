"""End to end: an in-process server on a free loopback port, pynetdicom as the client."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer, dcmjs_query, echo, find, make_dataset, write_wl
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from wlmserver.config import Config
from wlmserver.matching.status import Status
from wlmserver.service.server import MODALITY_WORKLIST_FIND, WorklistServer
from wlmserver.store.cache import IndexCache
from wlmserver.store.formats import Formats
from wlmserver.store.index import WorklistStore

PENDING, SUCCESS = int(Status.PENDING), int(Status.SUCCESS)


def _sps_query(**sps: str) -> Dataset:
    query = Dataset()
    query.PatientName = ""
    query.PatientID = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledStationAETitle = ""
    item.ScheduledProcedureStepStartDate = ""
    item.ScheduledProcedureStepStartTime = ""
    for keyword, value in sps.items():
        setattr(item, keyword, value)
    query.ScheduledProcedureStepSequence = [item]
    return query


@pytest.fixture
def populated(db: Path) -> Path:
    write_wl(
        db / "WLM" / "multi.wl",
        PatientID="P1",
        sps=[
            {
                "Modality": "CT",
                "ScheduledProcedureStepStartTime": "0900",
                "ScheduledProcedureStepID": "S1",
            },
            {
                "Modality": "MR",
                "ScheduledProcedureStepStartTime": "1300",
                "ScheduledProcedureStepID": "S2",
                "ScheduledStationAETitle": ["MR01", "MR02"],
            },
        ],
    )
    write_wl(
        db / "WLM" / "latin1.wl",
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen",
        PatientID="P2",
        sps=[
            {
                "Modality": "US",
                "ScheduledProcedureStepStartTime": "1100",
                "ScheduledStationAETitle": "US01",
            }
        ],
    )
    return db


def test_one_answer_per_matching_step_in_order(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    results = find(server.port, _sps_query())
    assert [s for s, _ in results] == [PENDING, PENDING, PENDING, SUCCESS]
    answers = [a for s, a in results if s == PENDING]
    assert all(len(a.ScheduledProcedureStepSequence) == 1 for a in answers)
    assert [a.ScheduledProcedureStepSequence[0].Modality for a in answers] == ["CT", "US", "MR"]


@pytest.mark.parametrize(
    ("sps", "expected"),
    [
        ({"Modality": "MR"}, ["MR"]),
        ({"ScheduledStationAETitle": "MR02"}, ["MR"]),
        ({"ScheduledStationAETitle": "US01\\CT01"}, ["CT", "US"]),
        ({"ScheduledProcedureStepStartTime": "1000-1200"}, ["US"]),
        (
            {
                "ScheduledProcedureStepStartDate": "20261122",
                "ScheduledProcedureStepStartTime": "1200-",
            },
            ["MR"],
        ),
        ({"ScheduledProcedureStepStartDate": "20261123-"}, []),
    ],
)
def test_sps_matching_over_the_network(
    start_server: StartServer, populated: Path, sps: dict[str, str], expected: list[str]
) -> None:
    server = start_server()
    answers = [a for s, a in find(server.port, _sps_query(**sps)) if s == PENDING]
    assert [a.ScheduledProcedureStepSequence[0].Modality for a in answers] == expected


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_transfer_syntaxes_and_utf8_query_for_latin1_file(
    start_server: StartServer, populated: Path, syntax: str
) -> None:
    server = start_server()
    query = _sps_query()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.PatientName = "Müller*"
    results = find(server.port, query, transfer_syntax=syntax)
    (answer,) = [a for s, a in results if s == PENDING]
    assert str(answer.PatientName) == "Müller^Jürgen"
    assert answer.SpecificCharacterSet == "ISO_IR 100"


def test_failure_status_names_the_offending_element(
    start_server: StartServer, populated: Path
) -> None:
    server = start_server()
    results = find(server.port, _sps_query(ScheduledProcedureStepStartDate="2026-11-22"))
    ((status, ds),) = results
    assert status == int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    assert ds is not None
    offending = ds.OffendingElement
    tags = list(offending) if isinstance(offending, MultiValue) else [offending]
    assert 0x00400002 in [int(t) for t in tags]
    # the attribute and what to type, whole, within the 64 characters of an ErrorComment
    assert ds.ErrorComment == "SPSStartDate: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD"
    # the server keeps serving
    assert [s for s, _ in find(server.port, _sps_query(Modality="CT"))] == [PENDING, SUCCESS]


def test_no_fail_answers_success_without_matches(
    start_server: StartServer, populated: Path
) -> None:
    server = start_server(fail_invalid_query=False)
    assert [s for s, _ in find(server.port, _sps_query(ScheduledProcedureStepStartDate="x"))] == [
        SUCCESS
    ]


def test_two_sps_items_in_a_query_fail(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    query = _sps_query()
    query.ScheduledProcedureStepSequence.append(Dataset())
    ((status, ds),) = find(server.port, query)
    assert status == int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    assert ds is not None and "2 items" in ds.ErrorComment


def test_undecodable_identifier_fails_without_traceback(
    start_server: StartServer, populated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    query = Dataset()
    query.PatientName = "X"
    query.SpecificCharacterSet = "ISO_IR 999"
    with caplog.at_level(logging.WARNING):
        ((status, ds),) = find(server.port, query)
    assert status >= 0xA000
    assert ds is not None and "ISO_IR 999" in ds.ErrorComment
    assert not any(r.exc_info for r in caplog.records)


def test_cancel_between_answers(start_server: StartServer, db: Path) -> None:
    steps = 20000  # one file, many steps: far more answers than can be sent before the cancel
    write_wl(
        db / "WLM" / "many.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(steps)]
    )
    server = start_server()
    results = find(server.port, _sps_query(), cancel_after=1)
    statuses = [s for s, _ in results]
    assert statuses[-1] == int(Status.CANCEL), (len(statuses), statuses[-3:])
    assert statuses.count(PENDING) < steps


def test_unknown_called_ae_title_is_rejected(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    for aet in ("NOSUCHAE", "..", "WLM/..", "../../etc"):
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(MODALITY_WORKLIST_FIND)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=aet)
        assert assoc.is_rejected, aet
        rejection = assoc.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (
            0x01,
            0x01,
            0x07,
        )


def test_any_aet_folder_serves_unknown_titles(start_server: StartServer, populated: Path) -> None:
    server = start_server(any_aet_folder="WLM")
    assert len(find(server.port, _sps_query(Modality="US"), aet="ANYTHING")) == 2


def test_new_ae_folder_is_served_without_restart(start_server: StartServer, db: Path) -> None:
    server = start_server()
    write_wl(db / "CT77" / "a.wl", PatientID="NEWFOLDER")
    results = find(server.port, _sps_query(), aet="CT77")  # no waiting: resolved on association
    assert [a.PatientID for s, a in results if s == PENDING] == ["NEWFOLDER"]


def test_echo(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    assert echo(server.port) == SUCCESS


def _answered_ids(port: int) -> list[str]:
    return [str(a.PatientID) for s, a in find(port, _sps_query()) if s == PENDING and a is not None]


def test_dropped_file_is_answered_within_a_second_and_deletion_stops_it(
    start_server: StartServer, db: Path
) -> None:
    server = start_server()
    assert _answered_ids(server.port) == []
    path = write_wl(db / "WLM" / "dropped.wl", PatientID="DROPPED")
    deadline = time.monotonic() + 1.0
    while _answered_ids(server.port) != ["DROPPED"]:
        assert time.monotonic() < deadline, "dropped file not answered within a second"
    path.unlink()
    deadline = time.monotonic() + 1.0
    while _answered_ids(server.port) != []:
        assert time.monotonic() < deadline, "deleted file still answered after a second"


def test_bad_files_are_skipped_and_everything_else_served(
    start_server: StartServer, db: Path
) -> None:
    write_wl(db / "WLM" / "good.wl", PatientID="GOOD")
    (db / "WLM" / "garbage.wl").write_bytes(b"\x00\x01garbage")
    (db / "WLM" / "empty.wl").write_bytes(b"")
    write_wl(db / "WLM" / "incomplete.wl", make_dataset(PatientID=None))
    server = start_server()
    assert _answered_ids(server.port) == ["GOOD"]


def test_tcp_nodelay_on_server_sockets(start_server: StartServer, populated: Path) -> None:
    server = start_server()
    seen: list[int] = []
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
    try:
        for active in server.ae.active_associations:
            sock = active.dul.socket.socket
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    finally:
        assoc.release()
    assert seen and all(seen)


def test_echo_is_answered_while_indexing_and_find_waits_for_the_index(db: Path) -> None:
    """Indexing is held up by a wlmscpfs-era writer holding the lockfile (another process)."""
    import fcntl
    import os

    from wlmserver.config import Config
    from wlmserver.service.server import WorklistServer

    write_wl(db / "WLM" / "a.wl", PatientID="AFTER-INDEX")
    lock_path = db / "WLM" / "lockfile"
    lock_path.touch()
    read_end, write_end = os.pipe()
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with open(lock_path, "r+b") as handle:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
            os.write(write_end, b"x")
            os.read(release_read, 1)  # hold the lock until told to release it
        os._exit(0)
    server = WorklistServer(Config(data_files_path=db, port=0, bind="127.0.0.1", rescan_interval=0))
    try:
        assert os.read(read_end, 1) == b"x"
        server.start(wait=False)
        assert echo(server.port) == SUCCESS
        assert not server.store.ready.is_set()  # still indexing: the echo did not wait
        os.write(release_write, b"x")
        assert _answered_ids(server.port) == ["AFTER-INDEX"]
    finally:
        os.write(release_write, b"x")
        os.waitpid(pid, 0)
        server.stop()


def test_the_index_is_kept_out_of_garbage_collection(
    start_server: StartServer, populated: Path
) -> None:
    import gc

    assert gc.isenabled()
    server = start_server()
    folder = server.store.folder("WLM")
    assert folder is not None
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # switched off only while the first index was built
    assert not gc.is_tracked(folder.entries) or gc.get_freeze_count() >= len(
        gc.get_referrers(folder)
    )


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_long_answer_streams_arrive_whole_and_in_order(
    start_server: StartServer, db: Path, transfer_syntax: str
) -> None:
    # more than one send batch, answers larger than the client's PDUs: fragmented and batched
    steps = 300
    sps = [
        {"ScheduledProcedureStepID": f"S{n:04}", "ScheduledProcedureStepDescription": "D" * 64}
        for n in range(steps)
    ]
    write_wl(db / "WLM" / "many.wl", PatientComments="C" * 2000, sps=sps)
    server = start_server()
    ae = AE(ae_title="TESTSCU")
    ae.maximum_pdu_size = 512
    ae.add_requested_context(MODALITY_WORKLIST_FIND, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
    assert assoc.is_established
    query = Dataset()
    query.PatientComments = ""  # LT, 2,000 characters: each answer spans several PDUs
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepDescription = ""
    query.ScheduledProcedureStepSequence = [item]
    try:
        responses = list(assoc.send_c_find(query, MODALITY_WORKLIST_FIND))
    finally:
        assoc.release()
    assert [int(s.Status) for s, _ in responses] == [PENDING] * steps + [SUCCESS]
    ids = [a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for _, a in responses[:-1]]
    assert ids == [f"S{n:04}" for n in range(steps)]
    assert all(
        a.PatientComments == "C" * 2000
        and a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == "D" * 64
        for _, a in responses[:-1]
    )


def test_peer_abort_during_a_stream_leaves_the_server_serving(
    start_server: StartServer, db: Path
) -> None:
    steps = 3000
    write_wl(
        db / "WLM" / "many.wl", sps=[{"ScheduledProcedureStepID": f"S{n}"} for n in range(steps)]
    )
    server = start_server()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
    assert assoc.is_established
    for n, (status, _) in enumerate(assoc.send_c_find(_sps_query(), MODALITY_WORKLIST_FIND)):
        assert status is not None and int(status.Status) == PENDING
        if n == 2:
            assoc.abort()
            break
    deadline = time.monotonic() + 10
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.ae.active_associations
    assert echo(server.port) == SUCCESS
    assert len(find(server.port, _sps_query(Modality="XX"))) == 1  # Success, no answers


def _pregnancy_store(db: Path) -> None:
    """Three patients: Pregnancy Status 4 (unknown), 1 (not pregnant), and none at all."""
    for pid, status, weight in (("P1", 4, "61.5"), ("P2", 1, None), ("P3", None, None)):
        ds = make_dataset(PatientID=pid, PatientWeight=weight)
        if status is not None:
            ds.PregnancyStatus = status
        write_wl(db / "WLM" / f"{pid}.wl", ds)


def _answered(results: list[tuple[int, Dataset | None]]) -> list[tuple[str, object, object]]:
    assert results[-1][0] == SUCCESS
    return [
        (ds.PatientID, ds.get("PregnancyStatus"), ds.get("PatientWeight"))
        for status, ds in results
        if status == PENDING and ds is not None
    ]


# dcmjs-dimse's ready-made worklist query sends Pregnancy Status 0 (a US key it cannot leave
# empty): an optional key wlmserver does not match by default is a return key only (PS3.4
# K.2.2.1.1.2), so it gets the answers of a universal query, Pregnancy Status filled from each
# entry (it got no answer: 0 matched nothing). Its matching keys with a value still match.
DCMJS_QUERIES = [
    ({}, ["P1", "P2", "P3"]),
    ({"PatientID": "P2"}, ["P2"]),
    ({"PatientWeight": "61.5", "ScheduledStationName": "NOWHERE"}, ["P1", "P2", "P3"]),
    ({"Modality": "MR"}, []),
]


@pytest.mark.parametrize(("values", "expected"), DCMJS_QUERIES)
def test_dcmjs_worklist_query_gets_what_a_universal_query_gets(
    start_server: StartServer, db: Path, values: dict[str, str], expected: list[str]
) -> None:
    _pregnancy_store(db)
    server = start_server()
    universal = _answered(find(server.port, dcmjs_query(None)))
    assert [pid for pid, _, _ in universal] == ["P1", "P2", "P3"]
    answered = _answered(find(server.port, dcmjs_query(**values)))
    assert [pid for pid, _, _ in answered] == expected
    assert answered == [row for row in universal if row[0] in expected]
    assert [status for _, status, _ in universal] == [4, 1, None]  # from the entry, not the query


# SPS start date and time with a time range crossing midnight, over DIMSE: the patient IDs
# answered, or the failure status. Two ranges are one date-time range (C.2.2.2.5.4): over two
# days it runs from the first evening to the next morning (it was refused with 0xA900); over
# one day it would end before it starts, so it is refused (it was read as the single day's
# night and answered a step of the next morning); a single day is the night that starts on it.
NIGHT_QUERIES = [
    ("20231231-20240101", "2200-0600", ["evening", "early"]),
    ("20231231", "2200-0600", ["evening", "early"]),
    ("20240101", "2200-0600", ["next"]),
    ("20240101-20240101", "2200-0600", 0xA900),
    ("20240101-20240102", "2200-0600", ["next"]),
]


@pytest.mark.parametrize(("dates", "times", "expected"), NIGHT_QUERIES)
def test_time_ranges_crossing_midnight(
    start_server: StartServer, db: Path, dates: str, times: str, expected: list[str] | int
) -> None:
    for name, day, time_ in [
        ("evening", "20231231", "2330"),
        ("early", "20240101", "0300"),
        ("late", "20240101", "0700"),
        ("before", "20231231", "2100"),
        ("next", "20240102", "0300"),
    ]:
        write_wl(
            db / "WLM" / f"{name}.wl",
            PatientID=name,
            sps=[
                {
                    "ScheduledProcedureStepStartDate": day,
                    "ScheduledProcedureStepStartTime": time_,
                }
            ],
        )
    server = start_server()
    results = find(
        server.port,
        _sps_query(ScheduledProcedureStepStartDate=dates, ScheduledProcedureStepStartTime=times),
    )
    if isinstance(expected, int):
        assert [s for s, _ in results] == [expected]
        return
    assert results[-1][0] == SUCCESS
    assert [ds.PatientID for s, ds in results if s == PENDING and ds is not None] == expected


@pytest.mark.parametrize("stars", ["*", "**", "***"])
def test_star_only_values_find_empty_and_absent_values(
    start_server: StartServer, db: Path, stars: str
) -> None:
    """``**`` on a Type 2 key found no entry whose value was zero-length or absent."""
    write_wl(db / "WLM" / "empty.wl", PatientID="EMPTY", AccessionNumber="")
    write_wl(db / "WLM" / "absent.wl", PatientID="ABSENT", AccessionNumber=None)
    write_wl(db / "WLM" / "full.wl", PatientID="FULL", AccessionNumber="A1")
    server = start_server()
    query = Dataset()
    query.PatientID = ""
    query.AccessionNumber = stars
    query.ReferringPhysicianName = stars
    results = find(server.port, query)
    found = sorted(str(ds.PatientID) for s, ds in results if s == PENDING and ds is not None)
    assert found == ["ABSENT", "EMPTY", "FULL"]


def test_a_pathological_wildcard_is_answered(start_server: StartServer, db: Path) -> None:
    """``***************Z`` once cost 21.6 s of CPU and froze every association (the work
    bound itself is tested in test_matching)."""
    for n in range(200):
        write_wl(db / "WLM" / f"{n}.wl", PatientID=f"P{n}", PatientName=f"NAME{n:03d}^GIVEN")
    server = start_server()
    query = Dataset()
    query.PatientName = "*" * 15 + "Z"
    assert [status for status, _ in find(server.port, query)] == [SUCCESS]
    query.PatientName = "*" * 15 + "N"
    assert [status for status, _ in find(server.port, query)].count(PENDING) == 200


def _random_store(root: Path, seed: int, files: int = 40) -> None:
    """Worklist files of random patients and steps: several items, Latin-1 names,
    incomplete items, nested code sequences, and a file that is not DICOM."""
    rng = random.Random(seed)
    names = ["DOE^JANE", "ROE^RICHARD", "Müller^Jürgen", "SØRENSEN^ÅSE", "NAKAMURA^KENJI"]
    for i in range(files):
        name = rng.choice(names)
        sps = []
        for j in range(rng.choice((1, 1, 2, 3))):
            code = Dataset()
            code.CodeValue = f"C{rng.randrange(5)}"
            code.CodingSchemeDesignator = "99TEST"
            code.CodeMeaning = f"PROTOCOL {j}"
            sps.append(
                {
                    "Modality": rng.choice(("CT", "MR", "US", None)),
                    "ScheduledStationAETitle": rng.choice(("CT01", "MR01", "US01")),
                    "ScheduledProcedureStepStartDate": f"202611{rng.randrange(20, 25)}",
                    "ScheduledProcedureStepStartTime": f"{rng.randrange(7, 19):02d}"
                    f"{rng.randrange(60):02d}",
                    "ScheduledProcedureStepID": f"S{i}-{j}",
                    "ScheduledProtocolCodeSequence": [code],
                }
            )
        charset = None if name.isascii() else "ISO_IR 100"
        write_wl(
            root / rng.choice(("WLM", "WLM", "CT01")) / f"f{i:03d}.wl",
            make_dataset(
                sps=sps,
                PatientName=name,
                PatientID=f"P{rng.randrange(1000):04d}",
                AccessionNumber=f"A{i:05d}",
                SpecificCharacterSet=charset,
            ),
        )
    (root / "WLM" / "junk.wl").write_bytes(b"not DICOM")


def _universal(port: int, aet: str) -> list[str]:
    """Every answer of a universal query (with a nested sequence), in order, as JSON."""
    query = _sps_query()
    query.AccessionNumber = ""
    query.SpecificCharacterSet = ""
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID = ""
    query.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = []
    results = find(port, query, aet=aet)
    assert results[-1][0] == SUCCESS
    return [a.to_json() for status, a in results if status == PENDING and a is not None]


def test_a_restart_from_the_index_cache_answers_the_same_without_reading_files(
    start_server: StartServer, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _random_store(db, seed=20261202)
    cache = tmp_path / "cache"
    first = start_server(index_cache=cache)
    before = {aet: _universal(first.port, aet) for aet in ("WLM", "CT01")}
    assert all(before.values())
    first.stop()
    assert (cache / "index.wlmcache").is_file()

    reads: list[str] = []
    real_read = Formats.read

    def counting(self: Formats, path: Path, **options: Any) -> Any:
        reads.append(path.name)
        return real_read(self, path, **options)

    monkeypatch.setattr(Formats, "read", counting)
    second = start_server(index_cache=cache)
    assert reads == []  # every entry came from the cache
    assert {aet: _universal(second.port, aet) for aet in ("WLM", "CT01")} == before
    second.stop()

    without = start_server()  # and a server without a cache answers the same
    assert len(reads) == 41
    assert {aet: _universal(without.port, aet) for aet in ("WLM", "CT01")} == before


def _cache_server(db: Path, cache: Path, **timing: float) -> tuple[WorklistServer, list[bool]]:
    """A server with an index cache, and what each of its checks for open associations saw."""
    server = WorklistServer(
        Config(data_files_path=db, port=0, bind="127.0.0.1", index_cache=cache.parent)
    )
    for name, value in timing.items():
        setattr(server, name, value)
    seen: list[bool] = []
    real = server._associations_open

    def watched() -> bool:
        seen.append(real())
        return seen[-1]

    server._associations_open = watched  # type: ignore[method-assign]
    return server, seen


def _until(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Poll a condition (bounded); whether it came true."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_after_a_full_index_the_cache_is_written_once_associations_are_done(
    db: Path, tmp_path: Path
) -> None:
    """Writing the cache costs seconds of CPU at 100,000 entries: the modalities that waited
    for the index are answered first. It waits for no association to be open (or for
    ``cache_wait`` at most), and a server stopped before then writes it on its way out."""
    write_wl(db / "WLM" / "a.wl", PatientID="PIDQUIET")
    cache = tmp_path / "cache" / "index.wlmcache"
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)

    # an association open: the write waits for it, then comes once it is released
    server, seen = _cache_server(db, cache, cache_quiet=0.3, cache_wait=3600.0)
    server.start(wait=False)
    try:
        assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")  # a modality waiting
        assert assoc.is_established
        assert server.wait_indexed(10)
        assert _until(lambda: seen.count(True) >= 3)  # it looked, three times, and waited
        assert not cache.exists()
        assoc.release()
        assert _until(cache.exists)
        assert seen[-1] is False
    finally:
        server.stop()

    # an association open throughout: written when cache_wait is over
    cache.unlink()
    server, seen = _cache_server(db, cache, cache_quiet=3600.0, cache_wait=1.0)
    server.start(wait=False)
    try:
        assoc = ae.associate("127.0.0.1", server.port, ae_title="WLM")
        assert assoc.is_established
        assert _until(cache.exists)
        assert True in seen  # never quiet long enough: the deadline wrote it
        assoc.release()
    finally:
        server.stop()

    # stopped before the quiet moment comes: the wait ends, and the stop writes it
    cache.unlink()
    server, _ = _cache_server(db, cache, cache_quiet=3600.0)
    server.start()
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    stopping.join(60)
    assert not stopping.is_alive()
    assert cache.exists()


def test_without_a_usable_cache_the_listing_made_ahead_is_stopped(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing child only serves a start from the cache (signatures to check); with no
    cache every folder is read whole, and the child would only take a core from the workers."""
    from wlmserver.store.listing import ListingsAhead

    write_wl(db / "WLM" / "a.wl", PatientID="PIDAHEAD")
    cancelled: list[int] = []
    real_cancel = ListingsAhead.cancel

    def cancel(self: ListingsAhead) -> None:
        cancelled.append(1)
        real_cancel(self)

    monkeypatch.setattr(ListingsAhead, "cancel", cancel)
    config = Config(data_files_path=db, port=0, bind="127.0.0.1", index_cache=tmp_path / "c")
    for expected in ([1], [1]):  # no cache yet; then one written at the stop
        server = WorklistServer(config)
        server.start()
        try:
            query = Dataset()
            query.PatientID = "PIDAHEAD"
            answers = [a for status, a in find(server.port, query) if status == 0xFF00]
            assert [a.PatientID for a in answers] == ["PIDAHEAD"]
        finally:
            server.stop()
        assert cancelled == expected


def test_the_cache_is_written_again_after_large_changes_and_periodically(
    db: Path, tmp_path: Path
) -> None:
    """A crash costs reading the files changed since the cache was written, never a full
    index: after the first index the cache is written again once ``cache_changes`` files
    changed, or ``cache_interval`` seconds after the first change (issue 19)."""
    write_wl(db / "WLM" / "a.wl", PatientID="PIDKEEP1")
    cache = tmp_path / "cache" / "index.wlmcache"
    server, _ = _cache_server(
        db, cache, cache_quiet=0.05, cache_check=0.05, cache_changes=2, cache_interval=3600.0
    )
    assert server.cache is not None
    looks: list[int] = []
    real_changes = server.cache.changes

    def counted() -> int:
        looks.append(real_changes())
        return looks[-1]

    server.cache.changes = counted  # type: ignore[method-assign]
    server.start()
    try:
        assert _until(cache.exists)
        first = os.stat(cache).st_ino
        write_wl(db / "WLM" / "b.wl", PatientID="PIDKEEP2")
        assert _until(lambda: looks.count(1) >= 3)  # one change, seen three times: not yet
        assert os.stat(cache).st_ino == first
        write_wl(db / "WLM" / "c.wl", PatientID="PIDKEEP3")
        assert _until(lambda: os.stat(cache).st_ino != first)  # two: written again
        second = os.stat(cache).st_ino
        server.cache_changes, server.cache_interval = 100, 0.3
        write_wl(db / "WLM" / "d.wl", PatientID="PIDKEEP4")
        assert _until(lambda: os.stat(cache).st_ino != second)  # one, for long enough
    finally:
        server.stop()
    store = WorklistStore(db)
    assert IndexCache(cache.parent, store).load() is not None
