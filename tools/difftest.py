"""Differential test of wlmserver against DCMTK's wlmscpfs on a generated, seeded store.

The command, and the names the tests use; the harness itself is the package
``tools/differential`` (its docstring says what is compared, and how), in the order of a run:
``intended`` (the table of intended differences, what wlmscpfs matches), ``store`` and
``queries`` (generated from one seed), ``answers`` (as trees of decoded values), ``servers``
(both servers, the client sending them the same PDUs, the parser of what they answer),
``models`` (how each is to match), ``compare`` (each difference explained) and ``run``.

Usage::

    python3 tools/difftest.py --seed 7 --files 500 --queries 2000 [--keep DIR] [--ir87]

Exit status 0 when every difference is intended, 1 when any is not, 2 when a server could not
be started. Only 127.0.0.1 is used; every subprocess and network wait has a timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from differential import SPS, WLMSCPFS
from differential.answers import Response, answer_tree
from differential.compare import SUSPECTED, Comparer, Model
from differential.intended import (
    INTENDED,
    INTENDED_KINDS,
    LABEL,
    MULTI_ITEM,
    NOT_MATCHED,
    REFUSED,
    WILDCARD,
    readme_kinds,
    readme_table,
)
from differential.models import datetime_verdict, reference_verdict, scpfs_verdict, span
from differential.queries import Constraint, Query, generate, identifier
from differential.run import RunResult, main, run
from differential.servers import ServerError, parse_identifier
from differential.store import CHARSETS, IR87_CHARSETS, file_dataset

__all__ = [
    "CHARSETS",
    "INTENDED",
    "INTENDED_KINDS",
    "IR87_CHARSETS",
    "LABEL",
    "MULTI_ITEM",
    "NOT_MATCHED",
    "REFUSED",
    "SPS",
    "SUSPECTED",
    "WILDCARD",
    "WLMSCPFS",
    "Comparer",
    "Constraint",
    "Model",
    "Query",
    "Response",
    "RunResult",
    "ServerError",
    "answer_tree",
    "datetime_verdict",
    "file_dataset",
    "generate",
    "identifier",
    "main",
    "parse_identifier",
    "readme_kinds",
    "readme_table",
    "reference_verdict",
    "run",
    "scpfs_verdict",
    "span",
]

if __name__ == "__main__":
    sys.exit(main())
