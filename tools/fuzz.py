"""Fuzz wlmserver for longer than CI does: the strategies of ``tools/fuzzing.py``, more examples.

Runs every target (or those named) for ``--examples`` examples each, with a random seed (or
``--seed``), against the parsers, the query compiler and a real in-process server, then asks
the server a known query (and, after the ``mpps`` target, has a server started on the same
MPPS folder read back every instance acknowledged). Prints how many cases ran per target,
their outcomes, findings already known, and every failure (the shrunk example hypothesis
found). Exit status 1 when anything failed.

Usage::

    python3 tools/fuzz.py --examples 5000 [--targets parse find] [--seed 1]
    python3 tools/fuzz.py --examples 10000 --targets mpps
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzzing, beside this file
import fuzzing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000, help="examples per target")
    p.add_argument("--targets", nargs="*", choices=sorted(fuzzing.TARGETS), help="default: all")
    p.add_argument("--seed", type=int, help="a fixed seed (default: random; 0 would be CI's)")
    args = p.parse_args(argv)
    names = args.targets or list(fuzzing.TARGETS)
    random_seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {random_seed}, {args.examples} examples per target", flush=True)
    # the checks read the records themselves: nothing printed, nothing filtered out
    logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()])
    warnings.simplefilter("ignore")  # pydicom's warnings about the values it is fed
    tally: Counter[str] = Counter()
    failures: list[str] = []
    known: Counter[str] = Counter()
    started = time.monotonic()

    def run(name: str, fuzz: fuzzing.FuzzServer | None) -> None:
        begun = time.monotonic()
        try:
            fuzzing.run_target(name, args.examples, tally, fuzz=fuzz, random_seed=random_seed)
        except Exception as exc:  # hypothesis raises the shrunk failure
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(
            f"{name:14} {fuzzing.cases(tally, name):6} cases in {time.monotonic() - begun:6.1f} s",
            flush=True,
        )

    for name in (n for n in names if not fuzzing.TARGETS[n].needs_server):
        run(name, None)
    server_targets = [n for n in names if fuzzing.TARGETS[n].needs_server]
    if server_targets:
        with fuzzing.fuzz_server(echo_thread_errors=False) as fuzz:
            for name in server_targets:
                run(name, fuzz)
            still_open = fuzz.settle()
            if still_open:
                failures.append(f"{still_open} associations still open after the fuzz cases")
            if "mpps" in server_targets:
                try:  # what the server acknowledged, read back by a server started anew
                    fuzz.check_mpps_readback(tally)
                except fuzzing.Finding as exc:
                    failures.append(f"MPPS read back: {exc}")
            try:
                fuzz.check_healthy()
                print("after the fuzz cases: the known queries answer correctly")
            except fuzzing.Finding as exc:
                failures.append(f"health check: {exc}")
            known.update(fuzz.known)
    print("\noutcomes:")
    for key, count in sorted(tally.items()):
        print(f"  {key:44} {count}")
    for finding, count in known.items():
        print(f"known finding, seen {count} times: {finding}")
    print(f"\n{len(failures)} failures in {time.monotonic() - started:.1f} s")
    for failure in failures:
        print(f"FAILURE {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
