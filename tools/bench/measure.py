"""The measurements against one running server: latency, concurrency (pynetdicom and lean
clients), the universal query (pynetdicom and findscu), cancel, and dropped files.

Each returns its figures as a dict; a measurement that cannot be made raises
:class:`~bench.BenchmarkError`.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from leanfind import LeanClient, LeanError, LeanOutcome, repeat_in_threads, run_clients
from pydicom.dataset import Dataset

from . import BenchmarkError
from .client import Client, FindOutcome
from .queries import QuerySpec, query_dataset
from .store import AE_FOLDER, DROP_PREFIX, FileEncoder, Step, WorklistFile, remove_drops

Outcome = TypeVar("Outcome")


def _p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _spread(times_ms: Sequence[float]) -> dict[str, float | None]:
    """``p50_ms`` and ``p95_ms`` of some times (None when there are none)."""
    return {
        "p50_ms": statistics.median(times_ms) if times_ms else None,
        "p95_ms": _p95(times_ms) if times_ms else None,
    }


def _repeat(run: Callable[[int], Outcome], repeat: int, max_seconds: float) -> list[Outcome]:
    """The outcomes of ``run(0)``, ``run(1)``, ...: ``repeat`` runs at most, and no further run
    starts after ``max_seconds`` (the first always runs)."""
    outcomes: list[Outcome] = []
    stop = time.monotonic() + max_seconds
    for n in range(max(1, repeat)):
        if n and time.monotonic() > stop:
            break
        outcomes.append(run(n))
    return outcomes


def measure_latency(
    client: Client, port: int, spec: QuerySpec, repeat: int, max_seconds: float
) -> tuple[dict[str, Any], list[Dataset]]:
    """Repeat one query, each on a new association.

    Parameters
    ----------
    client : Client
        The client.
    port : int
        The server's port.
    spec : QuerySpec
        The query.
    repeat : int
        Runs at most.
    max_seconds : float
        No further run starts after this many seconds (the first always runs).

    Returns
    -------
    tuple[dict[str, Any], list[Dataset]]
        Figures (``p50_ms``, ``p95_ms``, ``answers``, ``answers_vary``, ``runs``,
        ``statuses``, ``latencies_ms``) and the first run's answers.
    """
    query = query_dataset(spec)
    outcomes = _repeat(lambda n: client.find(port, query, keep=n == 0), repeat, max_seconds)
    times = [outcome.seconds * 1000 for outcome in outcomes]
    counts = {outcome.answers for outcome in outcomes}
    statuses = {outcome.status for outcome in outcomes}
    figures = {
        **_spread(times),
        "answers": min(counts),
        "answers_vary": len(counts) > 1,
        "runs": len(times),
        "statuses": sorted(s if s is not None else -1 for s in statuses),
        "latencies_ms": [round(t, 3) for t in times],
    }
    return figures, outcomes[0].identifiers


def measure_concurrency(
    port: int, spec: QuerySpec, clients: int, seconds: float, timeout: float
) -> dict[str, Any]:
    """Several client threads, each with its own associations, repeat one query.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The query.
    clients : int
        Threads.
    seconds : float
        No thread starts a query after this many seconds.
    timeout : float
        Per-query timeout.

    Returns
    -------
    dict[str, Any]
        ``clients``, ``seconds`` (until the last query ended), ``queries``, ``qps`` and
        ``errors`` (failed associations or queries without a success status).
    """
    query = query_dataset(spec)

    def make_query() -> Callable[[], int]:
        client = Client(timeout)
        return lambda: _status(client.find(port, query))

    figures = repeat_in_threads(
        clients, seconds, make_query, (BenchmarkError,), join_timeout=timeout + 5
    )
    return _concurrency_figures(clients, figures)


def _concurrency_figures(clients: int, figures: dict[str, float]) -> dict[str, Any]:
    return {
        "clients": clients,
        "seconds": figures["seconds"],
        "queries": int(figures["queries"]),
        "qps": figures["qps"],
        "errors": int(figures["errors"]),
        "unfinished_clients": int(figures["unfinished"]),
    }


def _status(outcome: FindOutcome) -> int:
    return -1 if outcome.status is None else outcome.status


def measure_latency_lean(
    port: int, spec: QuerySpec, repeat: int, max_seconds: float, timeout: float
) -> dict[str, Any]:
    """Like :func:`measure_latency`, with the lean client: the server's own latency (the
    client neither decodes nor keeps the answers).

    Returns
    -------
    dict[str, Any]
        ``p50_ms``, ``p95_ms``, ``answers`` (the fewest of any run), ``runs``.
    """
    client = LeanClient(port, query_dataset(spec), called=AE_FOLDER, timeout=timeout)

    def run(_: int) -> LeanOutcome:
        try:
            outcome = client.find()
        except (OSError, LeanError) as exc:
            raise BenchmarkError(f"lean client: {exc}") from exc
        if outcome.status != 0:
            raise BenchmarkError(f"lean client: final status 0x{outcome.status:04X}")
        return outcome

    outcomes = _repeat(run, repeat, max_seconds)
    return {
        **_spread([outcome.seconds * 1000 for outcome in outcomes]),
        "answers": min(outcome.answers for outcome in outcomes),
        "runs": len(outcomes),
    }


def measure_concurrency_lean(
    port: int, spec: QuerySpec, clients: int, seconds: float
) -> dict[str, Any]:
    """Like :func:`measure_concurrency`, with ``tools/leanfind.py``'s raw-socket client.

    A pynetdicom client decodes every answer and costs more CPU than the server; on a
    2-core machine several of them measure themselves. The lean client only counts answers
    (about 1 ms of CPU per query), so this measures what the server can serve.

    Returns
    -------
    dict[str, Any]
        As :func:`measure_concurrency`.
    """
    figures = run_clients(port, query_dataset(spec), clients, seconds, called=AE_FOLDER)
    if not figures["queries"]:
        raise BenchmarkError(f"no query succeeded ({figures['errors']:.0f} errors)")
    return _concurrency_figures(clients, figures)


_SPS_KEYS = ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate")


def findscu_args(findscu: Path, port: int, spec: QuerySpec) -> list[str]:
    """DCMTK's ``findscu -W`` command line for a benchmark query (the answer counted from
    its ``-v`` output)."""
    args = [str(findscu), "-v", "-W", "-aet", "WLMBENCH", "-aec", AE_FOLDER]
    args += ["127.0.0.1", str(port), "-k", "PatientName", "-k", "PatientID"]
    for keyword, value in spec.matching_keys().items():
        key = f"(0040,0100)[0].{keyword}" if keyword in _SPS_KEYS else keyword
        args += ["-k", f"{key}={value}"]
    return args


def _findscu_once(args: list[str], timeout: float, nodelay: bool = False) -> tuple[float, int]:
    """Seconds of one findscu process and the answers it printed."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    started = time.perf_counter()
    try:
        result = subprocess.run(args, capture_output=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"findscu: no answer within {timeout:.0f} s") from exc
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchmarkError(f"findscu exit status {result.returncode}")
    return seconds, (result.stdout + result.stderr).count(b"(Pending)")


def measure_latency_findscu(
    findscu: Path,
    port: int,
    spec: QuerySpec,
    repeat: int,
    max_seconds: float,
    timeout: float,
    nodelay: bool = False,
) -> dict[str, Any]:
    """Like :func:`measure_latency`, with DCMTK's ``findscu`` (one process per query, as
    scripts use it; Nagle's algorithm on, its default, unless ``nodelay``: the client's
    ``TCP_NODELAY=1``).

    Returns
    -------
    dict[str, Any]
        ``p50_ms``, ``p95_ms`` (the whole process), ``answers`` (the fewest of any run),
        ``runs``.
    """
    args = findscu_args(findscu, port, spec)
    outcomes = _repeat(lambda _: _findscu_once(args, timeout, nodelay), repeat, max_seconds)
    return {
        **_spread([seconds * 1000 for seconds, _ in outcomes]),
        "answers": min(answers for _, answers in outcomes),
        "runs": len(outcomes),
    }


def measure_concurrency_findscu(
    findscu: Path, port: int, spec: QuerySpec, clients: int, seconds: float, timeout: float
) -> dict[str, Any]:
    """``clients`` loops, each running ``findscu`` processes one after another.

    Returns
    -------
    dict[str, Any]
        As :func:`measure_concurrency`.
    """
    args = findscu_args(findscu, port, spec)

    def make_query() -> Callable[[], int]:
        return lambda: (_findscu_once(args, timeout), 0)[1]

    figures = repeat_in_threads(
        clients, seconds, make_query, (BenchmarkError,), join_timeout=timeout + 5
    )
    return _concurrency_figures(clients, figures)


def measure_universal(port: int, spec: QuerySpec, timeout: float) -> dict[str, Any]:
    """The universal query received by pynetdicom, cut off (C-CANCEL) after ``timeout``.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The universal query.
    timeout : float
        Seconds; also the DIMSE timeout for the first answer.

    Returns
    -------
    dict[str, Any]
        ``answers``, ``seconds``, ``answers_per_s``, ``status`` and ``complete`` (whether
        the server finished before the cut-off).
    """
    client = Client(timeout)
    outcome = client.find(port, query_dataset(spec), deadline=time.monotonic() + timeout)
    return {
        "answers": outcome.answers,
        "seconds": outcome.seconds,
        "answers_per_s": outcome.answers / outcome.seconds,
        "status": outcome.status,
        "complete": outcome.status == 0 and not outcome.timed_out,
    }


def measure_universal_findscu(findscu: Path, port: int, timeout: float) -> dict[str, Any]:
    """The universal query received by DCMTK's findscu, killed after ``timeout`` seconds.

    Parameters
    ----------
    findscu : Path
        DCMTK's findscu.
    port : int
        The server's port.
    timeout : float
        Seconds.

    Returns
    -------
    dict[str, Any]
        ``answers``, ``seconds``, ``answers_per_s`` and ``complete``.
    """
    args = [
        str(findscu), "-v", "-W", "-aet", "WLMBENCH", "-aec", AE_FOLDER, "127.0.0.1", str(port),
        "-k", "PatientName", "-k", "PatientID", "-k", "(0040,0100)[0]",
    ]  # fmt: skip
    counted = [0]

    def count(stream: IO[bytes]) -> None:
        for line in stream:
            if b"Find Response" in line and b"(Pending)" in line:
                counted[0] += 1

    started = time.perf_counter()
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        assert process.stdout is not None
        reader = threading.Thread(target=count, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        reader.join(timeout=10)
    seconds = time.perf_counter() - started
    return {
        "answers": counted[0],
        "seconds": seconds,
        "answers_per_s": counted[0] / seconds,
        "complete": code == 0,
    }


def measure_cancel(port: int, spec: QuerySpec, timeout: float) -> dict[str, Any]:
    """The universal query, cancelled after its first answer.

    Parameters
    ----------
    port : int
        The server's port.
    spec : QuerySpec
        The universal query.
    timeout : float
        Per-query timeout.

    Returns
    -------
    dict[str, Any]
        ``status`` (0xFE00 expected), ``cancel_ms`` (C-CANCEL sent to final status, None if
        the server ended before the C-CANCEL was sent), ``answers_after_cancel`` and
        ``seconds`` (the whole association).
    """
    outcome = Client(timeout).find(port, query_dataset(spec), cancel_after=1)
    return {
        "status": outcome.status,
        "cancel_ms": None if outcome.cancel_seconds is None else outcome.cancel_seconds * 1000,
        "answers_after_cancel": outcome.answers_after_cancel,
        "seconds": outcome.seconds,
    }


def measure_drops(
    client: Client, port: int, folder: Path, seed: int, ref_date: str, count: int
) -> dict[str, Any]:
    """Time from renaming a new file into the AE folder until a query answers it.

    Parameters
    ----------
    client : Client
        The client.
    port : int
        The server's port.
    folder : Path
        The AE folder it serves.
    seed : int
        The store's seed (for the files' UIDs).
    ref_date : str
        The reference date (the dropped step is scheduled on it).
    count : int
        Files to drop, one after the other. Each is written under a temporary name, renamed
        into place (as docs/database.md says to), then queried by its accession number, query after
        query, for at most 5 seconds. All of them are removed again at the end.

    Returns
    -------
    dict[str, Any]
        ``count``, ``answered``, ``p50_ms``, ``p95_ms`` (None if none was answered) and
        ``times_ms``.
    """
    encoder = FileEncoder(seed)
    times: list[float] = []
    try:
        for n in range(count):
            step = Step("CT", ("CT01",), ref_date, "120000", "CT001", "CT HEAD W/O CONTRAST")
            wl = WorklistFile(
                900_000_000 + n, f"DROP{n:06d}", "DROPPED^FILE", False, "19800101", "O",
                f"DROP{n:08d}", (step,),
            )  # fmt: skip
            name = f"{DROP_PREFIX}{n:04d}.wl"
            temp = folder / f".{name}.tmp"
            temp.write_bytes(encoder.encode(wl))
            query = query_dataset(QuerySpec("drop", "drop", accession=wl.accession))
            os.replace(temp, folder / name)
            started = time.perf_counter()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if client.find(port, query).answers:
                    times.append((time.perf_counter() - started) * 1000)
                    break
    finally:
        remove_drops(folder)
    return {
        "count": count,
        "answered": len(times),
        **_spread(times),
        "times_ms": [round(t, 3) for t in times],
    }
