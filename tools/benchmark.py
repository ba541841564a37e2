"""Benchmark wlmserver against DCMTK's wlmscpfs (where installed) on the same generated stores.

For each store size it generates ``<workdir>/store-<N>/WLM/*.wl`` (N scheduled procedure steps;
about one file in ten holds two), starts ``wlmserver`` and ``wlmscpfs`` on it, and a *floor*:
a plain pynetdicom SCP answering from a precomputed list, the least any pynetdicom server can
cost. Then it measures, with a new association per query as modalities do:

- selective queries (station AE + modality + date, patient ID, accession number, patient name
  prefix): p50 and p95 latency;
- 8 concurrent clients (processes) repeating the station query: queries per second;
- a universal query streamed to DCMTK's ``findscu`` (a C++ client, so the client is not the
  bottleneck): answers per second;
- cancelling a universal query after its first answer: time until the Cancel status;
- index (cold start) time and resident memory of wlmserver.

Usage::

    python3 tools/benchmark.py --sizes 1000 10000 100000 [--json out.json]

Only 127.0.0.1 is used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from wlmserver.encode import AnswerElement, encode_elements  # noqa: E402

MWL = "1.2.840.10008.5.1.4.31"
WLMSCPFS = Path("/usr/bin/wlmscpfs")
FINDSCU = Path("/usr/bin/findscu")
STATIONS = {
    "CT": ["CT01", "CT02", "CT03", "CT04"],
    "MR": ["MR01", "MR02", "MR03"],
    "US": ["US01", "US02", "US03", "US04", "US05", "US06"],
    "CR": ["CR01", "CR02"],
    "DX": ["DX01", "DX02"],
    "MG": ["MG01"],
    "NM": ["NM01"],
}
FAMILY = [
    "NAKAMURA",
    "OSEI",
    "GARCIA",
    "FISCHER",
    "ROSSI",
    "BROWN",
    "SATO",
    "KOWALSKI",
    "DUBOIS",
    "PATEL",
    "MENSAH",
    "LINDQVIST",
    "HALVORSEN",
    "AHMED",
    "OKAFOR",
    "SILVA",
    "NOVAK",
    "JENSEN",
    "MORI",
    "KHAN",
    "LOPEZ",
    "MARTIN",
    "WEBER",
    "BAKER",
    "EVANS",
]
GIVEN = [
    "KENJI",
    "ABENA",
    "LUIS",
    "HANNAH",
    "GIULIA",
    "OLIVIA",
    "YUKI",
    "ANNA",
    "CLAIRE",
    "RAVI",
    "KWAME",
    "ERIK",
    "TOR",
    "SARA",
    "NGOZI",
    "JOAO",
    "PETRA",
    "LARS",
    "AI",
    "OMAR",
]


# --------------------------------------------------------------------------- store generation
def _date(ref: str, offset: int) -> str:
    import datetime

    day = datetime.date(int(ref[:4]), int(ref[4:6]), int(ref[6:])) + datetime.timedelta(offset)
    return day.strftime("%Y%m%d")


def _file_bytes(elements: list[AnswerElement], instance: str) -> bytes:
    body = encode_elements(sorted(elements), False, True, ())
    meta_rest = encode_elements(
        [
            (0x00020001, "OB", ("0001",)),
            (0x00020002, "UI", ("1.2.276.0.7230010.3.1.0.1",)),
            (0x00020003, "UI", (instance,)),
            (0x00020010, "UI", ("1.2.840.10008.1.2.1",)),
        ],
        False,
        True,
        (),
    )
    meta = encode_elements([(0x00020000, "UL", (str(len(meta_rest)),))], False, True, ())
    return b"\x00" * 128 + b"DICM" + meta + meta_rest + body


def generate(folder: Path, steps: int, seed: int, ref: str) -> int:
    """Write a store of ``steps`` scheduled procedure steps; returns the number of files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    files = written = 0
    patients = max(1, steps // 2)
    while written < steps:
        files += 1
        pid = rng.randrange(patients)
        name = f"{FAMILY[pid % len(FAMILY)]}^{GIVEN[(pid // len(FAMILY)) % len(GIVEN)]}"
        items = []
        for n in range(2 if rng.random() < 0.1 and written + 1 < steps else 1):
            modality = rng.choice(list(STATIONS))
            station: tuple[str, ...] = (rng.choice(STATIONS[modality]),)
            if rng.random() < 0.05:
                station = tuple(STATIONS[modality][:2])
            items.append(
                [
                    (0x00080060, "CS", (modality,)),
                    (0x00400001, "AE", station),
                    (0x00400002, "DA", (_date(ref, rng.randrange(-30, 31)),)),
                    (
                        0x00400003,
                        "TM",
                        (f"{rng.randrange(7, 19):02d}{rng.randrange(0, 60, 5):02d}00",),
                    ),
                    (0x00400006, "PN", ("LINDQVIST^ERIK",)),
                    (0x00400007, "LO", (f"{modality} EXAMINATION",)),
                    (0x00400009, "SH", (f"SPS{files:07d}{n}",)),
                    (0x00400010, "SH", (f"{station[0]} ROOM",)),
                    (0x00400011, "SH", ("RADIOLOGY",)),
                ]
            )
            written += 1
        elements: list[AnswerElement] = [
            (0x00080050, "SH", (f"ACC{files:08d}",)),
            (0x00080090, "PN", ("OKAFOR^NGOZI",)),
            (0x00100010, "PN", (name,)),
            (0x00100020, "LO", (f"PID{pid:07d}",)),
            (0x00100030, "DA", (f"19{40 + pid % 60:02d}0{1 + pid % 9}1{pid % 9}",)),
            (0x00100040, "CS", ("F" if pid % 2 else "M",)),
            (0x0020000D, "UI", (f"1.2.826.0.1.3680043.10.1234.7.{seed}.{files}",)),
            (0x00321060, "LO", ("IMAGING PROCEDURE",)),
            (0x00400100, "SQ", [sorted(i) for i in items]),
            (0x00401001, "SH", (f"RP{files:08d}",)),
            (0x00401003, "SH", ("ROUTINE",)),
        ]
        data = _file_bytes(elements, f"1.2.826.0.1.3680043.10.1234.8.{seed}.{files}")
        (folder / f"{files:07d}.wl").write_bytes(data)
    return files


def store(workdir: Path, steps: int, seed: int, ref: str) -> tuple[Path, int]:
    """A store of ``steps`` steps, generated once and reused (marked complete by a stamp)."""
    root = workdir / f"store-{steps}-{seed}-{ref}"
    stamp = root / ".complete"
    if stamp.exists():
        return root, int(stamp.read_text())
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    files = generate(root / "WLM", steps, seed, ref)
    stamp.write_text(str(files))
    print(f"generated {steps} steps in {files} files in {time.perf_counter() - started:.1f} s")
    return root, files


# --------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def running(
    args: list[str], port: int, ready: str | None, timeout: float
) -> Iterator[tuple[subprocess.Popen[str], float]]:
    """Start a server process; yield it and its start-up time (to its ready line or port)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if ready:
            assert process.stdout is not None
            line = process.stdout.readline()
            if ready not in line:
                raise RuntimeError(f"{args[0]} did not start: {line!r}")
        _wait_port(port, timeout)
        yield process, time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def floor_server(port: int, count: int) -> None:
    """A plain pynetdicom SCP answering every C-FIND with ``count`` precomputed answers."""
    answers = []
    for n in range(count):
        ds = Dataset()
        ds.PatientName = f"FLOOR^{n}"
        ds.PatientID = f"PID{n:07d}"
        ds.AccessionNumber = f"ACC{n:08d}"
        item = Dataset()
        item.Modality = "CT"
        item.ScheduledStationAETitle = "CT01"
        item.ScheduledProcedureStepStartDate = "20261122"
        item.ScheduledProcedureStepStartTime = "101500"
        ds.ScheduledProcedureStepSequence = [item]
        answers.append(ds)

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        _ = event.identifier
        for ds in answers:
            yield 0xFF00, ds
        yield 0x0000, None

    ae = AE(ae_title="FLOOR")
    ae.add_supported_context(MWL)
    ae.maximum_associations = 50
    ae.start_server(
        ("127.0.0.1", port), evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_CONN_OPEN, _nodelay)]
    )


# --------------------------------------------------------------------------- client side
def _query(kind: str, ref: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledStationAETitle = ""
    item.ScheduledProcedureStepStartDate = ""
    item.ScheduledProcedureStepStartTime = ""
    if kind == "station":
        item.ScheduledStationAETitle, item.Modality = "CT01", "CT"
        item.ScheduledProcedureStepStartDate = ref
    elif kind == "patient":
        ds.PatientID = "PID0000042"
    elif kind == "accession":
        ds.AccessionNumber = "ACC00000042"
    elif kind == "name":
        ds.PatientName = "NAKA*"
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _nodelay(event: Any) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: The benchmark's client sets TCP_NODELAY, so that latencies show the servers' costs rather
#: than the client's Nagle stalls (the same client is used for every server).
CLIENT_HANDLERS: list[Any] = [(evt.EVT_CONN_OPEN, _nodelay)]


def find_once(port: int, query: Dataset, aet: str = "WLM") -> int:
    """One C-FIND over a new association; returns the number of answers."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, evt_handlers=CLIENT_HANDLERS)
    if not assoc.is_established:
        raise RuntimeError("association failed")
    count = 0
    try:
        for status, _ in assoc.send_c_find(query, MWL):
            if status is None:
                raise RuntimeError("no response")
            if status.Status in (0xFF00, 0xFF01):
                count += 1
    finally:
        assoc.release()
    return count


def latencies(
    port: int, query: Dataset, repeat: int, max_seconds: float
) -> tuple[list[float], int]:
    times: list[float] = []
    count = 0
    deadline = time.monotonic() + max_seconds
    while len(times) < repeat and (not times or time.monotonic() < deadline):
        started = time.perf_counter()
        count = find_once(port, query)
        times.append((time.perf_counter() - started) * 1000)
    return times, count


def _worker(args: tuple[int, str, float]) -> int:
    port, ref, seconds = args
    query = _query("station", ref)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        find_once(port, query)
        done += 1
    return done


def concurrent_qps(port: int, ref: str, seconds: float, clients: int = 8) -> float:
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        started = time.perf_counter()
        done = sum(pool.map(_worker, [(port, ref, seconds)] * clients))
        return done / (time.perf_counter() - started)


def universal(port: int, timeout: float) -> tuple[int, float]:
    """Stream the universal query to DCMTK's findscu; returns (answers, seconds)."""
    args = [
        str(FINDSCU),
        "-W",
        "-v",
        "-aec",
        "WLM",
        "127.0.0.1",
        str(port),
        "-k",
        "PatientName",
        "-k",
        "PatientID",
        "-k",
        "(0040,0100)[0]",
    ]
    started = time.perf_counter()
    count = 0
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            if "(Pending)" in line:
                count += 1
            if time.monotonic() > deadline:
                process.kill()
                break
    return count, time.perf_counter() - started


def drop_latency(port: int, folder: Path, count: int) -> list[float]:
    """Milliseconds from renaming a new file into place until a query answers it."""
    times = []
    for n in range(count):
        accession = f"DROP{n:06d}"
        elements: list[AnswerElement] = [
            (0x00080050, "SH", (accession,)),
            (0x00100010, "PN", ("DROPPED^FILE",)),
            (0x00100020, "LO", (f"DROP{n}",)),
            (0x0020000D, "UI", (f"1.2.826.0.1.3680043.10.1234.6.{n}",)),
            (0x00321060, "LO", ("DROPPED",)),
            (
                0x00400100,
                "SQ",
                [
                    [
                        (0x00080060, "CS", ("CT",)),
                        (0x00400001, "AE", ("CT01",)),
                        (0x00400002, "DA", ("20261122",)),
                        (0x00400003, "TM", ("120000",)),
                        (0x00400007, "LO", ("DROPPED",)),
                        (0x00400009, "SH", (f"SPSDROP{n}",)),
                    ]
                ],
            ),
            (0x00401001, "SH", (f"RPDROP{n}",)),
        ]
        temp = folder / f".drop{n}.tmp"
        temp.write_bytes(_file_bytes(elements, f"1.2.826.0.1.3680043.10.1234.5.{n}"))
        query = _query("none", "")
        query.AccessionNumber = accession
        os.replace(temp, folder / f"drop{n:06d}.wl")
        started = time.perf_counter()
        deadline = time.monotonic() + 5
        while find_once(port, query) == 0 and time.monotonic() < deadline:
            pass
        times.append((time.perf_counter() - started) * 1000)
    for n in range(count):
        (folder / f"drop{n:06d}.wl").unlink(missing_ok=True)
    return times


def cancel_time(port: int) -> tuple[float, int]:
    """Seconds from sending C-CANCEL after the first answer to the final status, and it."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    query = _query("all", "")
    status_code = -1
    sent = time.perf_counter()
    try:
        for n, (status, _) in enumerate(assoc.send_c_find(query, MWL)):
            if status is None:
                break
            status_code = int(status.Status)
            if n == 0:
                assoc.send_c_cancel(1, query_model=MWL)
                sent = time.perf_counter()
    finally:
        assoc.release()
    return time.perf_counter() - sent, status_code


# --------------------------------------------------------------------------- one size
QUERIES = ["station", "patient", "accession", "name"]


def measure_server(
    name: str, port: int, steps: int, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    out: dict[str, Any] = {}
    cap = args.max_seconds
    for kind in QUERIES:
        times, count = latencies(port, _query(kind, args.date), args.repeat, cap)
        out[kind] = {
            "p50_ms": statistics.median(times),
            "p95_ms": _p95(times),
            "answers": count,
            "runs": len(times),
        }
    if steps <= 10000 or args.concurrency_all:
        out["qps_8_clients"] = concurrent_qps(port, args.date, args.concurrency_seconds)
    if FINDSCU.exists() and name != "floor":
        count, seconds = universal(port, args.universal_timeout)
        out["universal"] = {"answers": count, "seconds": seconds, "answers_per_s": count / seconds}
    if name == "wlmserver":
        out["cancel_s"], out["cancel_status"] = cancel_time(port)
        drops = drop_latency(port, args.workdir_store / "WLM", args.drops)
        out["drop_ms"] = {"p50": statistics.median(drops), "p95": _p95(drops), "count": len(drops)}
    results[name] = out


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_size(steps: int, args: argparse.Namespace) -> dict[str, Any]:
    root, files = store(args.workdir, steps, args.seed, args.date)
    args.workdir_store = root
    results: dict[str, Any] = {"steps": steps, "files": files}
    port = free_port()
    server = [
        sys.executable,
        "-m",
        "wlmserver",
        "-dfp",
        str(root),
        "--bind",
        "127.0.0.1",
        "-q",
        str(port),
    ]
    with running(server, port, "on port", 600) as (process, started):
        results["wlmserver_index_s"] = started
        results["wlmserver_rss_mb_indexed"] = rss_mb(process.pid)
        measure_server("wlmserver", port, steps, args, results)
        results["wlmserver_rss_mb_after"] = rss_mb(process.pid)
    station_answers = results["wlmserver"]["station"]["answers"]
    port = free_port()
    floor = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--floor-server",
        str(port),
        str(station_answers),
    ]
    with running(floor, port, None, 60):
        times, _ = latencies(port, _query("station", args.date), args.repeat, args.max_seconds)
        results["floor"] = {"station": {"p50_ms": statistics.median(times), "p95_ms": _p95(times)}}
        if steps <= 10000 or args.concurrency_all:
            results["floor"]["qps_8_clients"] = concurrent_qps(
                port, args.date, args.concurrency_seconds
            )
    if WLMSCPFS.exists() and not args.no_wlmscpfs:
        port = free_port()
        with running([str(WLMSCPFS), "-dfp", str(root), str(port)], port, None, 60):
            measure_server("wlmscpfs", port, steps, args, results)
    return results


# --------------------------------------------------------------------------- report
def machine() -> dict[str, str]:
    import pydicom
    import pynetdicom

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    dcmtk = ""
    if WLMSCPFS.exists():
        text = subprocess.run(
            [str(WLMSCPFS), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        match = re.search(r"v(\d+\.\d+\.\d+)", text)
        dcmtk = match.group(1) if match else ""
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cols(label: str, *values: str) -> str:
    return f"{label:34} " + " ".join(f"{v:>10}" for v in values)


def report(results: dict[str, Any]) -> str:
    """A table per size: wlmserver, wlmscpfs, floor, and the ratios."""
    w, d, f = results.get("wlmserver", {}), results.get("wlmscpfs", {}), results.get("floor", {})
    lines = [
        f"== {results['steps']} steps in {results['files']} files",
        _cols("metric", "wlmserver", "wlmscpfs", "floor", "scpfs/wlm", "wlm/floor"),
    ]

    def row(
        label: str, ours: float | None, theirs: float | None, floor: float | None, per_s: bool
    ) -> None:
        ratio = (ours / theirs if per_s else theirs / ours) if ours and theirs else None
        floor_ratio = (floor / ours if per_s else ours / floor) if ours and floor else None
        lines.append(
            _cols(label, _fmt(ours), _fmt(theirs), _fmt(floor), _fmt(ratio), _fmt(floor_ratio, 2))
        )

    for kind in QUERIES:
        answers = w.get(kind, {}).get("answers", 0)
        for stat in ("p50_ms", "p95_ms"):
            floor = f.get(kind, {}).get(stat) if kind == "station" else None
            mine, theirs = w.get(kind, {}).get(stat), d.get(kind, {}).get(stat)
            row(f"{kind} {stat} ({answers} answers)", mine, theirs, floor, False)
    if "qps_8_clients" in w:
        row(
            "queries/s, 8 clients (station)",
            w["qps_8_clients"],
            d.get("qps_8_clients"),
            f.get("qps_8_clients"),
            True,
        )
    if "universal" in w:
        theirs = d.get("universal", {})
        row(
            "universal answers/s (findscu)",
            w["universal"]["answers_per_s"],
            theirs.get("answers_per_s"),
            None,
            True,
        )
        lines.append(
            _cols(
                "  universal answers",
                str(w["universal"]["answers"]),
                str(theirs.get("answers", "-")),
            )
        )
    lines.append(_cols("index (cold start) s", _fmt(results.get("wlmserver_index_s"), 2)))
    lines.append(
        _cols(
            "RSS MB indexed, after queries",
            _fmt(results.get("wlmserver_rss_mb_indexed")),
            _fmt(results.get("wlmserver_rss_mb_after")),
        )
    )
    if "drop_ms" in w:
        drop = w["drop_ms"]
        lines.append(
            _cols("dropped file answered: ms p50, p95", _fmt(drop["p50"]), _fmt(drop["p95"]))
        )
    if "cancel_s" in w:
        lines.append(
            _cols(
                "cancel after 1st answer: s, status",
                _fmt(w["cancel_s"], 3),
                hex(w["cancel_status"]),
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wlmserver-bench"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--date", default="20261122", help="the reference (today's) date")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per query type and server")
    parser.add_argument("--concurrency-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency-all", action="store_true", help="also above 10,000 steps")
    parser.add_argument("--universal-timeout", type=float, default=120.0)
    parser.add_argument("--no-wlmscpfs", action="store_true")
    parser.add_argument("--drops", type=int, default=20, help="files dropped to time visibility")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--floor-server", nargs=2, type=int, metavar=("PORT", "ANSWERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.floor_server:
        floor_server(*args.floor_server)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    everything: dict[str, Any] = {"machine": info, "sizes": []}
    for steps in args.sizes:
        results = run_size(steps, args)
        everything["sizes"].append(results)
        print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
