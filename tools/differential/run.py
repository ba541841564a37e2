"""One run: generate, start both servers, ask every query, compare; and the command."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import MULTI_AE_TITLE, SPS_PREFIX, TIMEOUT, WLMSCPFS
from . import __doc__ as OVERVIEW
from .answers import Response
from .compare import Comparer, Model, Outcome
from .intended import INTENDED_KINDS
from .queries import Query, generate, quiet_pydicom
from .servers import (
    Client,
    ServerError,
    find_request,
    free_port,
    server,
    wlmscpfs_command,
    wlmserver_command,
)
from .store import CHARSETS, IR87_CHARSETS, Weights, WlFile, write_stores


@dataclass
class RunResult:
    """The figures and outcomes of one run."""

    seed: int
    files: int
    multi_item_files: int
    incomplete_files: int
    outcomes: list[Outcome]
    seconds: float
    multi_check: str = ""  # a problem with the claim that wlmscpfs skips multi-item files
    notes: Counter[str] = field(default_factory=Counter)

    @property
    def unexplained(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem]

    @property
    def identical(self) -> int:
        return sum(1 for o in self.outcomes if o.identical)

    def by_kind(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for o in self.outcomes:
            if not o.problem:
                counts.update(o.kinds)
        return counts

    def summary(self) -> str:
        """One figure line (and a coverage line)."""
        intended = sum(1 for o in self.outcomes if o.kinds and not o.problem)
        kinds = self.by_kind()
        by_kind = ", ".join(f"{k}: {kinds[k]}" for k in INTENDED_KINDS if kinds[k]) or "none"
        return (
            f"difftest seed {self.seed}: {self.files} files ({self.multi_item_files} multi-item, "
            f"{self.incomplete_files} incomplete); {len(self.outcomes)} queries: "
            f"{self.identical} identical, {intended} with intended differences ({by_kind}), "
            f"{len(self.unexplained)} unexplained; {self.seconds:.1f} s"
        )

    def problem_counts(self) -> Counter[str]:
        """Unexplained differences by what is wrong (the reason, without its details)."""
        return Counter(
            re.sub(r" \(.*", "", problem) for o in self.unexplained for problem in o.problems
        )

    def coverage(self) -> str:
        types = Counter(re.sub(r" \[.*\]$|\(.*", "", n).strip() for n in self.notes.elements())
        return "matching types: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items()))

    def report(self, limit: int = 20) -> str:
        """The unexplained differences, readable."""
        parts = [o.report() for o in self.unexplained[:limit]]
        if len(self.unexplained) > limit:
            parts.append(f"... and {len(self.unexplained) - limit} more unexplained differences")
        if self.multi_check:
            parts.insert(0, self.multi_check)
        return "\n\n".join(parts)


def _ask_all(
    client: Client, queries: Sequence[Query], requests: Sequence[bytes], out: list[Response]
) -> None:
    for query, request in zip(queries, requests, strict=True):
        try:
            out.append(client.find(query, request))
        except Exception as exc:  # a harness error shows as this query's problem, not a hang
            client.close()
            out.append(Response(None, error=f"; {type(exc).__name__}: {exc}"))


def run(
    seed: int,
    files: int,
    queries: int,
    workdir: Path,
    *,
    charsets: Weights = CHARSETS,
    wlmscpfs: Path = WLMSCPFS,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Generate a store and queries from ``seed``, run both servers, compare every query."""
    started = time.monotonic()
    store, query_list = generate(seed, files, queries, charsets)
    wlm_root, scpfs_root = write_stores(store, workdir)
    model = Model({wl.uid: wl for wl in store})
    multi = [wl for wl in store if len(wl.steps) > 1]
    multi_uids = {wl.uid for wl in multi}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    scpfs_port = free_port()
    wlm_port = free_port()
    while wlm_port == scpfs_port:
        wlm_port = free_port()
    with (
        quiet_pydicom(),  # on values answers hold that are not valid for their VR
        server(
            "wlmscpfs",
            wlmscpfs_command(scpfs_root, scpfs_port, wlmscpfs),
            scpfs_port,
            logs / "wlmscpfs.log",
        ),
        server(
            "wlmserver", wlmserver_command(wlm_root, wlm_port), wlm_port, logs / "wlmserver.log"
        ),
    ):
        # first (wlmscpfs -s serves one association at a time): the multi-item files alone
        multi_check = _check_multi(scpfs_port, wlm_port, multi)
        scpfs, wlm = Client(scpfs_port), Client(wlm_port)
        try:
            if progress:
                progress(f"{len(store)} files written; {len(query_list)} queries to send")
            requests = [find_request(q) for q in query_list]
            expected: list[Response] = []
            got: list[Response] = []
            # both servers at once: each has its own client thread and association
            thread = threading.Thread(
                target=_ask_all, args=(scpfs, query_list, requests, expected), daemon=True
            )
            thread.start()
            _ask_all(wlm, query_list, requests, got)
            thread.join(timeout=len(query_list) * TIMEOUT)
            if thread.is_alive():
                raise ServerError("wlmscpfs queries did not finish")
            if progress:
                answers = sum(len(r.answers) for r in (*expected, *got))
                progress(f"queries sent: {time.monotonic() - started:.1f} s, {answers} answers")
            comparer = Comparer(model, multi_uids, scpfs.find)
            outcomes = [
                comparer.compare(q, e, g) for q, e, g in zip(query_list, expected, got, strict=True)
            ]
        finally:
            scpfs.close()
            wlm.close()
    notes: Counter[str] = Counter(n for q in query_list for n in q.notes)
    return RunResult(
        seed,
        len(store),
        len(multi),
        sum(1 for wl in store if wl.incomplete),
        outcomes,
        time.monotonic() - started,
        multi_check,
        notes,
    )


def _check_multi(scpfs_port: int, wlm_port: int, multi: Sequence[WlFile]) -> str:
    """The intended difference itself: wlmscpfs answers none of the multi-item files (it skips
    them as incomplete), wlmserver one answer per complete item."""
    query = Query(0, ("StudyInstanceUID", SPS_PREFIX + ".ScheduledProcedureStepID"))
    answers = {}
    for name, port in (("wlmscpfs", scpfs_port), ("wlmserver", wlm_port)):
        client = Client(port, MULTI_AE_TITLE)
        try:
            answers[name] = client.find(query)
        finally:
            client.close()
    complete = sum(wl.served_steps() for wl in multi)
    scpfs, wlm = answers["wlmscpfs"], answers["wlmserver"]
    if scpfs.status != 0 or scpfs.answers or wlm.status != 0 or len(wlm.answers) != complete:
        return (
            f"multi-item files: expected wlmscpfs to answer none of {len(multi)} files and "
            f"wlmserver {complete} steps; wlmscpfs: {scpfs.describe()}; wlmserver: {wlm.describe()}"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=OVERVIEW.split("\n\n")[0] if OVERVIEW else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--keep", type=Path, help="write the stores and logs here (kept)")
    p.add_argument("--wlmscpfs", type=Path, default=WLMSCPFS)
    p.add_argument("--limit", type=int, default=20, help="unexplained differences shown")
    p.add_argument(
        "--ir87",
        action="store_true",
        help="files in the default repertoire and ISO 2022 IR 87 (Japanese) only",
    )
    args = p.parse_args(argv)
    if not args.wlmscpfs.exists():
        print(f"{args.wlmscpfs} not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="difftest-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = run(
                args.seed,
                args.files,
                args.queries,
                workdir,
                charsets=IR87_CHARSETS if args.ir87 else CHARSETS,
                wlmscpfs=args.wlmscpfs,
                progress=lambda m: print(m, file=sys.stderr),
            )
        except ServerError as exc:
            print(f"difftest: {exc}", file=sys.stderr)
            return 2
    if result.unexplained or result.multi_check:
        print(result.report(args.limit))
        print()
        for problem, count in result.problem_counts().most_common():
            print(f"{count:5d}  {problem}")
        print()
    print(result.coverage())
    print(result.summary())
    return 1 if result.unexplained or result.multi_check else 0
