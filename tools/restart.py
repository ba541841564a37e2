"""Time a restart: from ``python3 -m wlmserver`` to the first correct C-FIND answer.

Starts wlmserver on a database as the documentation starts it (``wlmserver -dfp ROOT PORT``, so with
its default index cache in the user's cache folder; ``--index-cache DIR`` or
``--no-index-cache`` are passed on when given), polls it with one C-FIND by patient ID until
the expected number of answers arrives, prints the seconds since the process started and its
resident memory then, and stops it with SIGTERM (as systemd does: the server writes its index
cache then, if it changed). The first start indexes fully (unless a cache is there already);
each start after it is a restart from the cache; ``--runs N`` starts N times in a row.

Example (the benchmark's 100,000-step store, whose PID00000005 has 7 steps)::

    python3 tools/restart.py /tmp/wlmbench/store-100000-seed1-20261122 \\
        --patient-id PID00000005 --expect 7 --runs 3
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


def answers(port: int, patient_id: str, aet: str) -> int | None:
    """How many answers a C-FIND for one patient ID gets, or None when not answered."""
    ae = AE(ae_title="RESTART")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        return None
    query = Dataset()
    query.PatientID = patient_id
    query.PatientName = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    count = 0
    try:
        for status, identifier in assoc.send_c_find(query, MODALITY_WORKLIST_FIND):
            if status is None:
                return None
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                count += 1
    finally:
        assoc.release()
    return count


def rss_mb(pid: int) -> float:
    """The resident memory of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_start(args: argparse.Namespace) -> tuple[float, float]:
    """Start, wait for the expected answer, stop: (seconds to the answer, RSS MB then)."""
    port = free_port()
    command = [sys.executable, "-m", "wlmserver", "-dfp", str(args.root), "-q", str(port)]
    if args.index_cache is not None:
        command[3:3] = ["--index-cache", str(args.index_cache)]
    if args.no_index_cache:
        command[3:3] = ["--no-index-cache"]
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = started + args.timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"wlmserver exited: {process.communicate()[1]}")
            try:
                got = answers(port, args.patient_id, args.aet)
            except (OSError, RuntimeError):
                got = None
            if got == args.expect:
                seconds = time.monotonic() - started
                break
            if got is not None:
                raise SystemExit(f"{got} answers, expected {args.expect}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer within {args.timeout} s")
            time.sleep(0.05)
        memory = rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    if process.returncode != 0:
        raise SystemExit(f"wlmserver exited with {process.returncode}: {err}")
    return seconds, memory


def main(argv: list[str] | None = None) -> int:
    """Run the starts and print one line per start."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("root", type=Path, help="the database root (-dfp)")
    p.add_argument("--patient-id", required=True, help="the patient ID queried")
    p.add_argument("--expect", type=int, required=True, help="how many answers are correct")
    p.add_argument("--aet", default="WLM", help="the called AE title (default WLM)")
    p.add_argument("--index-cache", type=Path, help="wlmserver's --index-cache DIR")
    p.add_argument("--no-index-cache", action="store_true", help="wlmserver's --no-index-cache")
    p.add_argument("--runs", type=int, default=1, help="starts in a row (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per start at most")
    args = p.parse_args(argv)
    for run in range(1, args.runs + 1):
        seconds, memory = one_start(args)
        cache = (
            "no cache"
            if args.no_index_cache
            else "default cache"
            if args.index_cache is None
            else f"cache {args.index_cache}"
        )
        print(f"start {run} ({cache}): first correct answer {seconds:.2f} s, RSS {memory:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
