"""How long a one-answer query takes DCMTK's ``findscu``, with Nagle's algorithm on (its
default) and off (``TCP_NODELAY=1`` in its environment), against wlmserver and wlmscpfs.

Debian's DCMTK 3.6.7 ``findscu`` writes each PDU in two writes and leaves Nagle's algorithm on,
so its second write waits for the server's ACK of the first; a server that delays that ACK
(Linux: up to 40 ms once the connection is interactive) stalls every request. wlmserver
acknowledges promptly (``TCP_QUICKACK``, :func:`wlmserver.service.reactor.quick_ack`); the
goal is a Nagle client within 1.2 times of the same client with ``TCP_NODELAY=1``.

Usage::

    python3 tools/nagle.py [--runs 30] [--root wlistdb] [--no-wlmscpfs]

Prints, per server, the median and 90th percentile of the whole ``findscu`` process (start,
association, query, one answer, release) for both client settings, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port, wait_for_port

FINDSCU = Path("/usr/bin/findscu")
WLMSCPFS = Path("/usr/bin/wlmscpfs")
ROOT = Path(__file__).resolve().parent.parent / "wlistdb"


def one_answer_query(root: Path) -> tuple[str, str]:
    """An AE title of ``root`` and a patient ID with exactly one step in it."""
    from pydicom import dcmread

    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        counts: dict[str, int] = {}
        for path in sorted(folder.glob("*.wl")):
            ds = dcmread(path)
            pid = str(ds.get("PatientID", ""))
            counts[pid] = counts.get(pid, 0) + len(ds.get("ScheduledProcedureStepSequence", []))
        for pid, steps in counts.items():
            if steps == 1 and pid and re.fullmatch(r"[A-Za-z0-9]+", pid):
                return folder.name, pid
    raise SystemExit(f"{root}: no patient ID with exactly one step")


def time_queries(port: int, aet: str, pid: str, runs: int, nodelay: bool) -> list[float]:
    """Seconds of each of ``runs`` findscu processes, each answered once."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    args = [str(FINDSCU), "-W", "-aec", aet, "127.0.0.1", str(port)]
    args += ["-k", f"PatientID={pid}", "-k", "PatientName", "-v"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        times.append(time.perf_counter() - started)
        answers = (result.stdout + result.stderr).count("(Pending)")
        if result.returncode != 0 or answers != 1:
            raise SystemExit(f"findscu failed or got {answers} answers: {result.stderr[-300:]}")
    return times


def measure(name: str, command: list[str], port: int, aet: str, pid: str, runs: int) -> dict:  # type: ignore[type-arg]
    """Start a server, time both client settings (interleaved halves), stop it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        time_queries(port, aet, pid, 2, False)  # warm up
        nagle: list[float] = []
        nodelay: list[float] = []
        for half in (runs // 2, runs - runs // 2):  # interleaved, so load drifts hit both
            nagle += time_queries(port, aet, pid, half, False)
            nodelay += time_queries(port, aet, pid, half, True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return {"server": name, "nagle": nagle, "nodelay": nodelay}


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """The table: median and p90 per client setting, and the Nagle/no-delay ratio."""
    lines = [
        "| server | findscu (Nagle on) p50 / p90 ms | TCP_NODELAY=1 p50 / p90 ms | ratio p50 |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        a, b = statistics.median(row["nagle"]), statistics.median(row["nodelay"])
        lines.append(
            f"| {row['server']} | {a * 1000:.0f} / {_ms(row['nagle'], 0.9):.0f} | "
            f"{b * 1000:.0f} / {_ms(row['nodelay'], 0.9):.0f} | {a / b:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30, help="findscu runs per client setting")
    p.add_argument("--root", type=Path, default=ROOT, help="database root (default wlistdb/)")
    p.add_argument("--no-wlmscpfs", action="store_true", help="wlmserver only")
    args = p.parse_args(argv)
    if not FINDSCU.exists():
        raise SystemExit(f"{FINDSCU} not found: apt-get install dcmtk")
    aet, pid = one_answer_query(args.root)
    port = free_port()
    rows = [
        measure(
            "wlmserver",
            [sys.executable, "-m", "wlmserver", "-q", "-dfp", str(args.root), str(port)],
            port,
            aet,
            pid,
            args.runs,
        )
    ]
    if WLMSCPFS.exists() and shutil.which(str(WLMSCPFS)) and not args.no_wlmscpfs:
        port = free_port()
        command = [str(WLMSCPFS), "-dfr", "-dfp", str(args.root), str(port)]
        rows.append(measure("wlmscpfs -dfr", command, port, aet, pid, args.runs))
    print(f"one-answer findscu query (AE {aet}, {args.runs} runs per setting)")
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
