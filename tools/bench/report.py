"""The report: the machine the figures were taken on, and the table of one size."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any


def machine(wlmscpfs: Path | None) -> dict[str, Any]:
    """The machine and software the figures were taken on.

    Parameters
    ----------
    wlmscpfs : Path or None
        DCMTK's wlmscpfs, asked for its version.

    Returns
    -------
    dict[str, Any]
        ``nproc``, ``cpu``, ``system``, ``python``, ``pydicom``, ``pynetdicom``, ``dcmtk``.
    """
    import pydicom
    import pynetdicom

    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dcmtk = None
    if wlmscpfs is not None:
        with suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [str(wlmscpfs), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            match = re.search(r"v(\d+\.\d+\.\d+)", text)
            dcmtk = match.group(1) if match else text.strip().splitlines()[0]
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "system": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
    }


def _num(value: Any, digits: int = 1) -> str:
    """A figure for the table; ``-`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ratio(numerator: Any, denominator: Any) -> float | None:
    """numerator / denominator, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return float(numerator) / float(denominator)


def _loads(values: list[float] | None) -> str:
    """Load averages for the table header."""
    return "-" if not values else " ".join(f"{v:.2f}" for v in values)


def _per_query_cpu(concurrency: dict[str, Any] | None) -> float | None:
    """Server CPU milliseconds per query of a concurrency run."""
    if not concurrency or not concurrency.get("queries") or concurrency["server_cpu_s"] is None:
        return None
    return float(concurrency["server_cpu_s"]) * 1000 / int(concurrency["queries"])


def report(result: dict[str, Any]) -> str:
    """The table of one size.

    Parameters
    ----------
    result : dict[str, Any]
        What :func:`~bench.run.run_size` returned.

    Returns
    -------
    str
        Rows are metrics; columns wlmserver, wlmscpfs, floor, then ``scpfs/wlm`` (how many
        times faster wlmserver is than wlmscpfs: latency wlmscpfs/wlmserver, throughput
        wlmserver/wlmscpfs) and ``wlm/floor`` (wlmserver's cost relative to the floor:
        latency wlmserver/floor, throughput floor/wlmserver; 1.5 or less is within 1.5x).
    """
    servers = result["servers"]
    w = servers.get("wlmserver", {})
    d = servers.get("wlmscpfs", {})
    f = servers.get("floor", {})
    width = 34
    header = ["metric".ljust(width), "wlmserver", "wlmscpfs", "floor", "scpfs/wlm", "wlm/floor"]
    lines = [
        f"== {result['size']} SPS items in {result['files']} files "
        f"({result['files_two_sps']} with 2 SPS items, {result['files_latin1']} ISO_IR 100); "
        f"load average before {_loads(result.get('load_average_before'))}, "
        f"after {_loads(result.get('load_average_after'))}",
        " ".join(h if n == 0 else h.rjust(10) for n, h in enumerate(header)),
    ]

    def row(label: str, cells: Sequence[str], note: str = "") -> None:
        text = label.ljust(width) + " " + " ".join(c.rjust(10) for c in cells)
        lines.append((text + "  " + note).rstrip())

    def timed(label: str, ours: Any, theirs: Any, floor: Any, *, per_s: bool) -> None:
        versus = _ratio(ours, theirs) if per_s else _ratio(theirs, ours)
        cost = _ratio(floor, ours) if per_s else _ratio(ours, floor)
        row(label, [_num(ours), _num(theirs), _num(floor), _num(versus), _num(cost, 2)])

    def get(server: dict[str, Any], *path: str) -> Any:
        value: Any = server
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    row("index (cold start) s", [_num(get(w, "startup_s"), 2)], "wlmscpfs reads per query")
    row(
        "RSS MB ready / after queries",
        [
            f"{_num(get(w, 'rss_mb_ready'))}/{_num(get(w, 'rss_mb_after'))}",
            f"{_num(get(d, 'rss_mb_ready'))}/{_num(get(d, 'rss_mb_after'))}",
            f"{_num(get(f, 'rss_mb_ready'))}/{_num(get(f, 'rss_mb_after'))}",
        ],
        "wlmscpfs: parent; it forks per association",
    )
    if get(w, "drops"):
        row(
            "dropped file answered ms p50/p95",
            [f"{_num(get(w, 'drops', 'p50_ms'))}/{_num(get(w, 'drops', 'p95_ms'))}"],
            f"{get(w, 'drops', 'answered')} of {get(w, 'drops', 'count')} files renamed into place",
        )
    for key, query in result["queries"].items():
        if key == "universal":
            continue
        for stat in ("p50_ms", "p95_ms", "server_cpu_ms"):
            timed(
                f"{query['label']} {stat[:3]} ms" if stat != "server_cpu_ms" else "  server CPU ms",
                get(w, "queries", key, stat),
                get(d, "queries", key, stat),
                get(f, "queries", key, stat),
                per_s=False,
            )
        if get(w, "queries", key, "lean"):
            timed(
                "  p50 ms, lean client",
                *(get(s, "queries", key, "lean", "p50_ms") for s in (w, d, f)),
                per_s=False,
            )
        for client, label in (("findscu", "findscu"), ("findscu_nodelay", "findscu NODELAY")):
            if get(w, "queries", key, client):
                timed(
                    f"  p50 ms, {label}",
                    *(get(s, "queries", key, client, "p50_ms") for s in (w, d, f)),
                    per_s=False,
                )
        ours = get(w, "queries", key, "answers")
        flag = "" if ours == query["expected"] else "  MISMATCH"
        row(
            "  answers",
            [
                _num(ours),
                _num(get(d, "queries", key, "answers")),
                _num(get(f, "queries", key, "answers")),
            ],
            f"expected {query['expected']}; {query['expected_single_sps']} in 1-SPS files{flag}",
        )
    for key, kind in (
        ("concurrency", ""),
        ("concurrency_lean", " lean"),
        ("concurrency_findscu", " findscu"),
    ):
        if not get(w, key):
            continue
        timed(
            f"q/s, {get(w, key, 'clients')}{kind} clients, (a)",
            *(get(s, key, "qps") for s in (w, d, f)),
            per_s=True,
        )
        timed(
            "  server CPU ms/query",
            *(_per_query_cpu(get(s, key)) for s in (w, d, f)),
            per_s=False,
        )
    for key, client in (("universal", "pynetdicom"), ("universal_findscu", "findscu")):
        if key not in w:
            continue
        timed(
            f"universal answers/s ({client})",
            get(w, key, "answers_per_s"),
            get(d, key, "answers_per_s"),
            None,
            per_s=True,
        )
        cells = [
            f"{get(s, key, 'answers')}/{_num(get(s, key, 'seconds'))}"
            + ("" if get(s, key, "complete") else "!")
            for s in (w, d)
            if s
        ]
        cut = any(c.endswith("!") for c in cells)
        row("  answers/seconds", cells, "! = cut off by --universal-timeout" if cut else "")
        timed(
            "  server CPU s",
            get(w, key, "server_cpu_s"),
            get(d, key, "server_cpu_s"),
            None,
            per_s=False,
        )
    if "cancel" in w:
        present = [s for s in (w, d) if s]
        row(
            "cancel after 1st answer: ms",
            [_num(get(s, "cancel", "cancel_ms")) for s in present],
            "C-CANCEL sent to final status",
        )
        cells = []
        for s in present:
            status = get(s, "cancel", "status")
            after = get(s, "cancel", "answers_after_cancel")
            cells.append(f"{'-' if status is None else hex(status)}/{after}")
        row("  final status/answers after", cells, "0xfe00 = Cancel, 0x0 = all sent first")
    for mismatch in result.get("mismatches", []):
        lines.append(f"MISMATCH {mismatch}")
    for error in result.get("errors", []):
        lines.append(f"FAILED {error}")
    return "\n".join(lines)


def format_machine(info: dict[str, Any]) -> str:
    """One line describing the machine."""
    return (
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"pydicom {info['pydicom']}, pynetdicom {info['pynetdicom']}, "
        f"DCMTK {info['dcmtk'] or 'not installed'}"
    )
