"""The command line: the options, and ``main``, which runs every size and prints and writes
the figures."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import BenchmarkError
from . import __doc__ as OVERVIEW
from .floor import serve_floor
from .report import format_machine, machine, report
from .run import run_size
from .store import parse_date

WLMSCPFS = Path("/usr/bin/wlmscpfs")
FINDSCU = Path("/usr/bin/findscu")


def _date_arg(text: str) -> str:
    """A ``YYYYMMDD`` option value."""
    try:
        parse_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a date YYYYMMDD") from None
    if not re.fullmatch(r"\d{8}", text):
        raise argparse.ArgumentTypeError("expected a date YYYYMMDD")
    return text


def _executable(path: Path | None) -> Path | None:
    """``path`` if it is an executable file, else None."""
    return path if path is not None and os.access(path, os.X_OK) else None


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description=(OVERVIEW or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="SPS items")
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep stores, logs and answers here and reuse stores (default: a temporary "
        "folder, removed at the end)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated stores")
    p.add_argument("--date", type=_date_arg, default="20261122", help="the reference date")
    p.add_argument("--repeat", type=int, default=20, help="runs per selective query")
    p.add_argument(
        "--max-seconds", type=float, default=30.0, help="at most this long per query type"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    p.add_argument("--concurrency-seconds", type=float, default=10.0)
    p.add_argument(
        "--concurrency-max-size",
        type=int,
        default=10000,
        help="run the concurrency test at sizes up to this",
    )
    p.add_argument("--concurrency-all", action="store_true", help="at every size")
    p.add_argument("--universal-timeout", type=float, default=180.0, help="seconds")
    p.add_argument(
        "--drops", type=int, default=20, help="files dropped into the store to time updates"
    )
    p.add_argument("--query-timeout", type=float, default=300.0, help="DIMSE timeout, seconds")
    p.add_argument("--start-timeout", type=float, default=900.0, help="for wlmserver's index")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="generator processes")
    p.add_argument("--wlmscpfs", type=Path, default=WLMSCPFS)
    p.add_argument("--no-wlmscpfs", action="store_true")
    p.add_argument("--findscu", type=Path, default=FINDSCU, help="DCMTK's findscu")
    p.add_argument("--no-findscu", action="store_true")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra wlmserver argument (repeatable), e.g. --server-arg=--rescan-interval=0",
    )
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--floor-server", nargs=2, metavar=("PORT", "ANSWERS"), help=argparse.SUPPRESS)
    p.add_argument("--floor-lifetime", type=float, default=3600.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark.

    Parameters
    ----------
    argv : list[str] or None
        Command line arguments; None for ``sys.argv[1:]``.

    Returns
    -------
    int
        0; 1 when a wlmserver answer count differs from what the store holds; 2 when a
        server could not be started or a measurement failed (no association, no answer).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.floor_server:
        port, answers = args.floor_server
        return serve_floor(int(port), Path(answers), args.floor_lifetime)
    if min(args.sizes) < 1 or args.repeat < 1 or args.clients < 1:
        parser.error("--sizes, --repeat and --clients must be positive")
    installed = _executable(args.wlmscpfs)
    args.wlmscpfs = None if args.no_wlmscpfs else installed
    args.findscu = None if args.no_findscu else _executable(args.findscu)
    info = machine(installed)
    print(format_machine(info), flush=True)
    everything: dict[str, Any] = {"machine": info, "options": _options(args), "sizes": []}
    status = 0
    with ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wlmbench-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            try:
                result = run_size(size, workdir, args)
            except BenchmarkError as exc:
                print(f"size {size}: {exc}", file=sys.stderr)
                status = 2
                break
            everything["sizes"].append(result)
            print(report(result), flush=True)
            if result["mismatches"]:
                status = max(status, 1)
            if result["errors"]:
                status = 2
            if args.json:
                args.json.write_text(json.dumps(everything, indent=1, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, ensure_ascii=False))
    return status


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options as JSON-friendly values."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
