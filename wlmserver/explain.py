"""``wlmserver explain``: why an entry does or does not answer a query.

The query is made exactly as ``wlmserver query`` makes it (the same flags, or a captured
request with ``--request``) and compiled and matched by the server's own code
(:func:`wlmserver.query.compile_query`, :meth:`wlmserver.query.ItemQuery.mismatches`) against
the database read as the server reads it. For every entry (or only those of ``--entry-patient-id``
/ ``--entry-accession``) it prints ``MATCH`` or ``NO`` with each key that failed:

- ``ScheduledStationAETitle (0040,0001): query CT01, entry has CT1``
- ``ScheduledProcedureStepStartDate/Time: entry 20261121 0930 outside the query's 20261122``
- ``PatientName (0010,0010): query NAKAMURA*, entry has Nakamura^Kenji; case differs, and
  person names match case-sensitively (the server's --pn-case-insensitive changes that)``

It prints what the entries hold, which is patient data: it is a tool for the people who run
the server, on their own terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from wlmserver.client import UsageError, add_query_options, build_identifier
from wlmserver.config import bundled_database
from wlmserver.entry import Entry
from wlmserver.index import WorklistStore
from wlmserver.keys import SPS_SEQUENCE_TAG, describe_tag
from wlmserver.matching import compile_value
from wlmserver.query import CompiledQuery, ItemQuery, Mismatch, QueryError, compile_query

_PATIENT_ID, _ACCESSION = 0x00100020, 0x00080050


def _query_text(identifier: Dataset, tag: int, sps: bool) -> str:
    level = identifier
    if sps:
        items = identifier.get("ScheduledProcedureStepSequence") or []
        if not items:
            return ""
        level = items[0]
    element = level.get(tag)
    if element is None or element.value is None:
        return ""
    value = element.value
    if element.VM > 1:
        return "\\".join(str(v) for v in value)
    return str(value)


def _shown(values: Sequence[str]) -> str:
    return "\\".join(values) if values else "nothing"


def describe(mismatch: Mismatch, query: CompiledQuery, sps: bool, pn_fold: bool) -> str:
    """One readable reason."""
    ident = query.identifier
    if len(mismatch.tags) == 2:  # a combined date-time range
        date_tag, time_tag = mismatch.tags
        dates = _query_text(ident, date_tag, sps)
        times = _query_text(ident, time_tag, sps)
        wanted = " ".join(v for v in (dates, times) if v)
        entry = " ".join(mismatch.entry_values) or "nothing"
        name = describe_tag(date_tag).split(" (")[0].removesuffix("Date")
        return f"{name}Date/Time: entry {entry} outside the query's {wanted}"
    (tag,) = mismatch.tags
    if tag == SPS_SEQUENCE_TAG or (not mismatch.entry_values and _is_sequence(query, tag, sps)):
        return f"{describe_tag(tag)}: no item matches the query's item"
    wanted = _query_text(ident, tag, sps)
    reason = f"{describe_tag(tag)}: query {wanted}, entry has {_shown(mismatch.entry_values)}"
    element = (ident.ScheduledProcedureStepSequence[0] if sps else ident).get(tag)
    if element is not None and element.VR == "PN" and not pn_fold and wanted:
        folded = compile_value("PN", wanted, pn_fold=True)
        if folded is not None and folded(mismatch.entry_values):
            reason += (
                "; case (or accents) differ, and person names match case-sensitively "
                "(the server's --pn-case-insensitive changes that)"
            )
    return reason


def _is_sequence(query: CompiledQuery, tag: int, sps: bool) -> bool:
    level: ItemQuery = query.sps if sps else query.top
    return level.sequence(tag) is not None


def explain_entry(entry: Entry, query: CompiledQuery, pn_fold: bool) -> list[str]:
    """The reasons an entry does not match (empty: it matches)."""
    reasons = [describe(m, query, False, pn_fold) for m in query.top.mismatches(entry.top)]
    reasons += [describe(m, query, True, pn_fold) for m in query.sps.mismatches(entry.sps)]
    return reasons


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver explain``."""
    p = argparse.ArgumentParser(
        prog="wlmserver explain",
        description="Show, for each worklist entry, whether it answers a query and which "
        "key stops it, using the server's own matching.",
        allow_abbrev=False,
    )
    p.add_argument(
        "database", nargs="?", type=Path, help="the database root (default: the bundled one)"
    )
    p.add_argument("-aec", "--call", help="the called AE title (default: every AE folder)")
    add_query_options(p)
    p.add_argument("--pn-case-insensitive", action="store_true", help="as the server's option")
    p.add_argument("--json-drops", action="store_true", help="as the server's option")
    p.add_argument(
        "-dfr", "--disable-file-reject", action="store_true", help="as the server's option"
    )
    p.add_argument("--entry-patient-id", help="explain only the entries of this patient ID")
    p.add_argument("--entry-accession", help="explain only the entries of this accession number")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver explain``; 0 when some entry matches, 1 when none does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    root: Path = args.database or bundled_database()
    if not root.is_dir():
        parser.error(f"{root} is not a database root")
    args.all_keys = args.all_keys or False
    try:
        identifier = build_identifier(args)
    except UsageError as exc:
        parser.error(str(exc))
    try:
        query = compile_query(identifier, pn_fold=args.pn_case_insensitive)
    except QueryError as exc:
        print(f"the server answers this query with status 0x{int(exc.status):04X}: {exc.message}")
        return 1
    store = WorklistStore(
        root, reject_incomplete=not args.disable_file_reject, json_drops=args.json_drops
    )
    store.scan()
    folders = [f for f in store.snapshots() if args.call is None or f.name == args.call]
    if not folders:
        print(f"no AE folder {args.call!r} in {root}: the association would be rejected")
        return 1
    matched = shown = 0
    for folder in folders:
        for entry in folder.entries:
            if args.entry_patient_id and args.entry_patient_id not in entry.top.text(_PATIENT_ID):
                continue
            if args.entry_accession and args.entry_accession not in entry.top.text(_ACCESSION):
                continue
            shown += 1
            where = f"{folder.name}/{Path(entry.path).name}#{entry.item + 1}"
            reasons = explain_entry(entry, query, args.pn_case_insensitive)
            if not reasons:
                matched += 1
                print(f"MATCH  {where}")
            else:
                print(f"NO     {where}: " + "; ".join(reasons))
    print(f"{matched} of {shown} entries answer the query", file=sys.stderr)
    return 0 if matched else 1
