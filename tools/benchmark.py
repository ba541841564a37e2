"""Benchmark wlmserver against DCMTK's wlmscpfs and a pynetdicom floor on generated stores.

The command; the benchmark itself is the package ``tools/bench`` (its docstring says what is
measured, and how).

Usage::

    python3 tools/benchmark.py --sizes 1000 10000 100000 [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench and leanfind, beside this file
from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
