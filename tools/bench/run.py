"""One size: generate or reuse its store, then start each server in turn on it and run every
measurement (the queries' answer counts checked against the store)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from . import BenchmarkError
from .client import Client
from .measure import (
    measure_cancel,
    measure_concurrency,
    measure_concurrency_findscu,
    measure_concurrency_lean,
    measure_drops,
    measure_latency,
    measure_latency_findscu,
    measure_latency_lean,
    measure_universal,
    measure_universal_findscu,
)
from .queries import QuerySpec, query_dataset, query_specs
from .servers import Running, cpu_delta, cpu_seconds, free_port, rss_mb, server_process
from .store import AE_FOLDER, ensure_store

#: The command the package runs behind: the floor is its own process, ``benchmark.py
#: --floor-server PORT ANSWERS``.
SCRIPT = Path(__file__).resolve().parent.parent / "benchmark.py"


def _run_queries(
    running: Running,
    specs: list[QuerySpec],
    size: int,
    args: argparse.Namespace,
    only: tuple[str, ...] | None = None,
    drop_folder: Path | None = None,
) -> tuple[dict[str, Any], list[Dataset]]:
    """All measurements against one running server.

    Parameters
    ----------
    running : Running
        The server.
    specs : list[QuerySpec]
        The queries (the last is the universal one).
    size : int
        The store size (whether to run the concurrency test).
    args : argparse.Namespace
        The options.
    only : tuple[str, ...] or None
        Run only these selective queries and no universal or cancel (for the floor).
    drop_folder : Path or None
        Also time how soon files dropped into this AE folder are answered (last, so that
        the other figures are taken on the store as generated).

    Returns
    -------
    tuple[dict[str, Any], list[Dataset]]
        The figures, and the answers of query (a).
    """
    pid = running.process.pid
    errors: list[str] = []
    out: dict[str, Any] = {
        "startup_s": running.startup_s,
        "rss_mb_ready": rss_mb(pid),
        "queries": {},
        "errors": errors,
    }
    client = Client(args.query_timeout)

    def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one measurement, adding the server's CPU time; a failure is recorded."""
        before = cpu_seconds(pid)
        try:
            figures = measure()
        except BenchmarkError as exc:
            if running.process.poll() is not None:
                status = running.process.returncode
                raise BenchmarkError(f"{running.name} exited ({status}) in {what}: {exc}") from exc
            errors.append(f"{what}: {exc}")
            _progress(f"  {running.name:9} {what} FAILED: {exc}")
            return None
        figures["server_cpu_s"] = cpu_delta(before, cpu_seconds(pid))
        return figures

    # one query (a) first, not counted: the first query after start-up pays one-off costs
    warm_up = attempt(
        "warm-up", lambda: {"ms": client.find(running.port, query_dataset(specs[0])).seconds}
    )
    out["warm_up_ms"] = None if warm_up is None else warm_up["ms"] * 1000
    first_answers: dict[str, list[Dataset]] = {}

    def latency(spec: QuerySpec) -> dict[str, Any]:
        figures, first_answers[spec.key] = measure_latency(
            client, running.port, spec, args.repeat, args.max_seconds
        )
        return figures

    for spec in specs:
        if spec.key == "universal" or (only is not None and spec.key not in only):
            continue
        result = attempt(spec.label, partial(latency, spec))
        if result is None:
            continue
        cpu = result["server_cpu_s"]
        result["server_cpu_ms"] = None if cpu is None else cpu * 1000 / result["runs"]
        out["queries"][spec.key] = result
        _progress(
            f"  {running.name:9} {spec.label:36} p50 {result['p50_ms']:9.1f} ms  "
            f"{result['answers']} answers, {result['runs']} runs"
        )
        lean = attempt(
            f"{spec.label} (lean client)",
            partial(
                measure_latency_lean,
                running.port,
                spec,
                args.repeat,
                args.max_seconds,
                args.query_timeout,
            ),
        )
        if lean is not None:
            result["lean"] = lean
            _progress(f"  {running.name:9} {'  lean client':36} p50 {lean['p50_ms']:9.1f} ms")
        if args.findscu is not None and running.name != "floor":
            for key, nodelay in (("findscu", False), ("findscu_nodelay", True)):
                measured = attempt(
                    f"{spec.label} ({key})",
                    partial(
                        measure_latency_findscu,
                        args.findscu,
                        running.port,
                        spec,
                        args.repeat,
                        args.max_seconds,
                        args.query_timeout,
                        nodelay,
                    ),
                )
                if measured is not None:
                    result[key] = measured
                    _progress(
                        f"  {running.name:9} {'  ' + key:36} p50 {measured['p50_ms']:9.1f} ms"
                    )
    if args.concurrency_all or size <= args.concurrency_max_size:
        out["concurrency"] = attempt(
            "concurrency",
            lambda: measure_concurrency(
                running.port, specs[0], args.clients, args.concurrency_seconds, args.query_timeout
            ),
        )
        if out["concurrency"]:
            qps = out["concurrency"]["qps"]
            _progress(f"  {running.name:9} {args.clients} clients: {qps:.1f} q/s")
        out["concurrency_lean"] = attempt(
            "concurrency (lean clients)",
            lambda: measure_concurrency_lean(
                running.port, specs[0], args.clients, args.concurrency_seconds
            ),
        )
        if out["concurrency_lean"]:
            qps = out["concurrency_lean"]["qps"]
            _progress(f"  {running.name:9} {args.clients} lean clients: {qps:.1f} q/s")
        if args.findscu is not None and running.name != "floor":
            findscu = args.findscu
            out["concurrency_findscu"] = attempt(
                "concurrency (findscu loops)",
                lambda: measure_concurrency_findscu(
                    findscu,
                    running.port,
                    specs[0],
                    args.clients,
                    args.concurrency_seconds,
                    args.query_timeout,
                ),
            )
            if out["concurrency_findscu"]:
                qps = out["concurrency_findscu"]["qps"]
                _progress(f"  {running.name:9} {args.clients} findscu loops: {qps:.1f} q/s")
    if only is None:
        universal = specs[-1]
        out["universal"] = attempt(
            "universal",
            lambda: measure_universal(running.port, universal, args.universal_timeout),
        )
        if out["universal"]:
            _progress(
                f"  {running.name:9} universal: {out['universal']['answers']} answers in "
                f"{out['universal']['seconds']:.1f} s"
            )
        if args.findscu is not None:
            out["universal_findscu"] = attempt(
                "universal (findscu)",
                lambda: measure_universal_findscu(
                    args.findscu, running.port, args.universal_timeout
                ),
            )
        out["cancel"] = attempt(
            "cancel", lambda: measure_cancel(running.port, universal, args.query_timeout)
        )
    if drop_folder is not None and args.drops > 0:
        out["drops"] = attempt(
            "drops",
            lambda: measure_drops(
                client, running.port, drop_folder, args.seed, args.date, args.drops
            ),
        )
    station_answers = first_answers.get("station", [])
    out["rss_mb_after"] = rss_mb(running.process.pid)
    return out, station_answers


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the figures)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _progress(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def run_size(size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Generate or reuse the store of one size and measure every server on it.

    Parameters
    ----------
    size : int
        Steps in the store.
    workdir : Path
        Where the store, logs and floor answers go.
    args : argparse.Namespace
        The options.

    Returns
    -------
    dict[str, Any]
        The store's description, the queries with their expected answer counts, and the
        figures per server.
    """
    store = ensure_store(workdir, size, args.seed, args.date, args.jobs)
    files = store.files
    _progress(
        f"store of {size} steps in {len(files)} files: "
        + ("reused" if store.generated_s is None else f"generated in {store.generated_s:.1f} s")
        + f" ({store.root})"
    )
    specs = query_specs(files, args.date)
    result: dict[str, Any] = {
        "size": size,
        "files": len(files),
        "files_two_sps": sum(len(wl.steps) == 2 for wl in files),
        "files_latin1": sum(wl.latin1 for wl in files),
        "store": str(store.root),
        "load_average_before": _load_average(),
        "generated_s": store.generated_s,
        "queries": {
            spec.key: {
                "label": spec.label,
                "keys": spec.matching_keys(),
                "expected": spec.expected(files),
                "expected_single_sps": spec.expected(files, single_sps_only=True),
            }
            for spec in specs
        },
        "servers": {},
    }
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    servers = result["servers"]

    port = free_port()
    command = [sys.executable, "-m", "wlmserver", "-dfp", str(store.root), "--bind", "127.0.0.1"]
    command += [*args.server_arg, "-q", str(port)]
    ready = re.compile(rf"\bon port {port}\b")
    log = logs / f"wlmserver-{size}.log"
    with server_process("wlmserver", command, port, log, args.start_timeout, ready) as running:
        _progress(f"  wlmserver ready in {running.startup_s:.2f} s")
        servers["wlmserver"], station_answers = _run_queries(
            running, specs, size, args, drop_folder=store.root / AE_FOLDER
        )
    answers_path = workdir / f"floor-answers-{size}.json"
    answers_path.write_text(json.dumps([a.to_json_dict() for a in station_answers]))

    port = free_port()
    command = [sys.executable, str(SCRIPT), "--floor-server", str(port)]
    command += [str(answers_path), "--floor-lifetime", str(args.floor_lifetime)]
    ready = re.compile(rf"^floor on port {port}\b")
    with server_process("floor", command, port, logs / f"floor-{size}.log", 60, ready) as running:
        servers["floor"], _ = _run_queries(running, specs, size, args, only=("station",))

    if args.wlmscpfs is not None:
        port = free_port()
        command = [str(args.wlmscpfs), "-dfp", str(store.root), str(port)]
        log = logs / f"wlmscpfs-{size}.log"
        with server_process("wlmscpfs", command, port, log, 60) as running:
            servers["wlmscpfs"], _ = _run_queries(running, specs, size, args)

    result["mismatches"] = [
        f"{key}: wlmserver answered {figures['answers']}, the store holds "
        f"{result['queries'][key]['expected']}"
        for key, figures in servers["wlmserver"]["queries"].items()
        if figures["answers"] != result["queries"][key]["expected"] or figures["answers_vary"]
    ]
    drops = servers["wlmserver"].get("drops")
    if drops and drops["answered"] != drops["count"]:
        result["mismatches"].append(
            f"drops: {drops['count'] - drops['answered']} of {drops['count']} dropped files "
            "not answered within 5 s"
        )
    result["load_average_after"] = _load_average()
    result["errors"] = [f"{name}: {e}" for name, out in servers.items() for e in out["errors"]]
    universal = servers["wlmserver"].get("universal")
    if universal and universal["complete"] and universal["answers"] != size:
        result["mismatches"].append(
            f"universal: wlmserver answered {universal['answers']} of {size}"
        )
    return result
