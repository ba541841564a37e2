"""``wlmserver explain``: why an entry does or does not answer a query.

The query is made exactly as ``wlmserver query`` makes it (the same flags, or a captured
request with ``--request``) and compiled and matched by the server's own code
(:func:`~wlmserver.matching.query.compile_query`,
:meth:`~wlmserver.matching.query.ItemQuery.mismatches`) against
the database read as the server reads it. For every entry (or only those of ``--entry-patient-id``
/ ``--entry-accession``) it prints ``MATCH`` or ``NO`` with each key that failed:

- ``ScheduledStationAETitle (0040,0001): query CT01, entry has CT1``
- ``ScheduledProcedureStepStartDate/Time: entry 20261121 0930 outside the query's 20261122``
- ``PatientName (0010,0010): query NAKAMURA*, entry has Nakamura^Kenji; case differs, and
  person names match case-sensitively (the server's --pn-case-insensitive changes that)``

A key of the query that holds a value but is a return key only (not one of the server's
matching keys, PS3.4 K.2.2.1.1.2) is named before the entries, so that a user sees why it did
not filter: ``RETURN PregnancyStatus (0010,21C0) = 0: a return key only, ...``. A key matched
only because a modality profile matches more than the default keys (``match-keys``,
``match-all-keys``) says so where it fails, and a ``NOTE`` says when such keys removed every
answer.

Files the server does not serve, or serves only in part (a missing Type 1 attribute, cut
short, not DICOM ...), are listed as ``NOT SERVED`` with the reason. With ``--entry-patient-id``
or ``--entry-accession`` only those holding that patient or accession are listed; a file that
serves nothing is read leniently for that, and one too broken to tell is listed when its bytes
hold the value.

It prints what the entries hold, which is patient data: it is a tool for the people who run
the server, on their own terminal.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from wlmserver.config.profiles import Profile
from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import (
    DEFAULT_MATCHING,
    SPS_SEQUENCE_TAG,
    describe_tag,
    never_matched,
)
from wlmserver.matching.narrow import SPS_START_DATE, STATION_AET, narrow
from wlmserver.matching.primitives import compile_value
from wlmserver.matching.query import CompiledQuery, ItemQuery, Mismatch, QueryError, compile_query
from wlmserver.matching.record import Record
from wlmserver.matching.retention import scheduled_date
from wlmserver.matching.stepstatus import StatusView, asks_for_status
from wlmserver.store.dicomfile import parse
from wlmserver.store.files import FileState, read_file_bytes
from wlmserver.store.formats import JSON_DROP, Formats
from wlmserver.store.index import FolderSnapshot, WorklistStore
from wlmserver.tools.client import UsageError, add_query_options, build_identifier
from wlmserver.tools.configured import (
    add_config_option,
    hidden_statuses,
    load_for_tool,
    read_mpps,
    sources_line,
)

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


def explain_entry(
    entry: Entry, query: CompiledQuery, pn_fold: bool, profile: Profile | None = None
) -> list[str]:
    """The reasons an entry does not match (empty: it matches).

    With ``profile``, the constraints it added (:func:`~wlmserver.matching.narrow.narrow`)
    are named as the profile's, not the query's; a key matched only because the profile
    matches more keys than the default (``match-keys``, ``match-all-keys``) says so.
    """
    reasons = [
        describe(m, query, False, pn_fold) + _widened(m, False, profile)
        for m in query.top.mismatches(entry.top)
    ]
    for mismatch in query.sps.mismatches(entry.sps):
        added = _added_by_profile(query, mismatch, profile)
        reasons.append(
            added or describe(mismatch, query, True, pn_fold) + _widened(mismatch, True, profile)
        )
    return reasons


def _added_by_profile(
    query: CompiledQuery, mismatch: Mismatch, profile: Profile | None
) -> str | None:
    """The reason for a mismatch on a constraint the profile added, or None."""
    if profile is None or len(mismatch.tags) != 1:
        return None
    (tag,) = mismatch.tags
    if _query_text(query.identifier, tag, True):
        return None  # the query's own constraint
    entry = _shown(mismatch.entry_values)
    if tag == STATION_AET and profile.station_filter:
        return (
            f"{describe_tag(tag)}: entry has {entry}, not the calling station "
            f"(profile {profile.name}: station-filter)"
        )
    window = profile.dates()
    if tag == SPS_START_DATE and window is not None:
        return (
            f"{describe_tag(tag)}: entry {entry} outside {window[0]}-{window[1]} "
            f"(profile {profile.name}: date-window {list(profile.date_window or ())})"
        )
    return None


def _outside_default(mismatch: Mismatch, sps: bool) -> bool:
    """Whether a failed constraint is on a key the server does not match by default."""
    path = (SPS_SEQUENCE_TAG,) if sps else ()
    return not DEFAULT_MATCHING.matches_on(mismatch.tags[0], path)


def _widened(mismatch: Mismatch, sps: bool, profile: Profile | None) -> str:
    """What a reason adds when its key is matched only because of the profile."""
    if not _outside_default(mismatch, sps):
        return ""
    setting = "match-all-keys" if profile is not None and profile.match_all_keys else "match-keys"
    whose = f"profile {profile.name}'s {setting}" if profile is not None else setting
    return f" (matched by {whose}; by default a return key only)"


def fails_only_outside_default(entry: Entry, query: CompiledQuery) -> bool:
    """Whether an entry fails the query, and only on keys matched beyond the default ones:
    it would answer a query compiled with the default matching keys."""
    top = query.top.mismatches(entry.top)
    sps = query.sps.mismatches(entry.sps)
    return bool(top or sps) and all(
        _outside_default(m, level) for level, found in ((False, top), (True, sps)) for m in found
    )


def return_key_lines(query: CompiledQuery) -> list[str]:
    """One line for each key of the query that holds a value but is a return key only
    (PS3.4 K.2.2.1.1.2): it narrowed nothing, and the line says why and what changes that."""
    lines = []
    for key in query.return_only:
        where = "".join(f"{describe_tag(t).split(' (')[0]} item > " for t in key.path)
        sps = key.path == (SPS_SEQUENCE_TAG,)
        level = query.identifier.ScheduledProcedureStepSequence[0] if sps else query.identifier
        element = level.get(key.tag) if len(key.path) <= 1 else None
        shown = _query_text(query.identifier, key.tag, sps) if element is not None else ""
        value = f" = {shown}" if shown and element is not None and element.VR != "SQ" else ""
        if never_matched(key.tag):
            why = "never a matching key (PS3.4 Table K.6-1: matching type -)"
        else:
            why = (
                "not a matching key of this server (PS3.4 K.2.2.1.1.2), so it narrows "
                "nothing; a modality profile's match-keys makes it one"
            )
        lines.append(f"RETURN {where}{describe_tag(key.tag)}{value}: a return key only, {why}")
    return lines


def widened_note(query: CompiledQuery, profile: Profile, matched: int, blocked: int) -> str | None:
    """A note when keys matched beyond the default ones removed every answer: ``blocked``
    entries fail on those keys only (:func:`fails_only_outside_default`)."""
    if matched or not blocked or query.matching.is_default:
        return None
    keys = [
        describe_tag(tag)
        for level, path in ((query.top, ()), (query.sps, (SPS_SEQUENCE_TAG,)))
        for tag in (
            *(t for t, _ in level.values),
            *(d for d, _, _ in level.date_times),
            *(t for t, _ in level.sequences),
        )
        if not DEFAULT_MATCHING.matches_on(tag, path)
    ]
    setting = "match-all-keys" if profile.match_all_keys else "match-keys"
    return (
        f"NOTE   no entry answers; {blocked} would without {', '.join(keys)}, matched only "
        f"because of profile {profile.name}'s {setting} (by default a return key only)"
    )


@dataclass(frozen=True)
class EntryFilter:
    """The entries to explain: those of a patient ID and/or accession number (exact values).

    Attributes
    ----------
    patient_id : str or None
        ``--entry-patient-id``.
    accession : str or None
        ``--entry-accession``.
    """

    patient_id: str | None = None
    accession: str | None = None

    def __bool__(self) -> bool:
        return bool(self.patient_id or self.accession)

    def matches(self, patient_ids: Sequence[str], accessions: Sequence[str]) -> bool:
        """Whether values of a file's top level are the wanted ones."""
        if self.patient_id and self.patient_id not in patient_ids:
            return False
        return not (self.accession and self.accession not in accessions)

    def matches_record(self, top: Record) -> bool:
        """Whether an entry's top-level record is one of the wanted ones."""
        return self.matches(top.text(_PATIENT_ID), top.text(_ACCESSION))

    def describe(self) -> str:
        """``patient ID P1``, ``accession number A1``, or both."""
        parts = [f"patient ID {self.patient_id}"] if self.patient_id else []
        parts += [f"accession number {self.accession}"] if self.accession else []
        return " and ".join(parts)


def _ids_from_record(data: bytes) -> list[tuple[Sequence[str], Sequence[str]]]:
    record, _ = parse(data)
    return [(record.text(_PATIENT_ID), record.text(_ACCESSION))]


def _ids_from_pydicom(data: bytes) -> list[tuple[Sequence[str], Sequence[str]]]:
    ds = dcmread(io.BytesIO(data), force=True)  # lenient: reads what a cut-short file holds
    return [(_values(ds.get("PatientID")), _values(ds.get("AccessionNumber")))]


def _ids_from_json(data: bytes) -> list[tuple[Sequence[str], Sequence[str]]]:
    from wlmserver.store.orders import entries_from_json

    datasets = entries_from_json(data.decode("utf-8-sig"))
    return [(_values(ds.get("PatientID")), _values(ds.get("AccessionNumber"))) for ds in datasets]


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def holds(path: Path, wanted: EntryFilter) -> bool | None:
    """Whether a file that serves nothing holds the wanted entries, read leniently (never
    raises): True, False, or None when it cannot be read far enough to tell but its bytes
    contain the wanted values."""
    try:
        data = read_file_bytes(path)
    except Exception:  # a FIFO, a device, gone, unreadable: nothing to tell
        return False
    readers: list[Callable[[bytes], list[tuple[Sequence[str], Sequence[str]]]]]
    if JSON_DROP.names(path.name):
        readers = [_ids_from_json]
    else:
        readers = [_ids_from_record, _ids_from_pydicom]
    for reader in readers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = reader(data)
        except Exception:  # a broken file: try the next, more lenient reader
            continue
        if any(ids[0] or ids[1] for ids in found):
            return any(wanted.matches(*ids) for ids in found)
    values = [v for v in (wanted.patient_id, wanted.accession) if v]
    if all(v.encode("utf-8") in data for v in values):
        return None
    return False


def unserved_line(folder: FolderSnapshot, name: str, state: FileState) -> str:
    """The line for a file with a problem: ``NOT SERVED`` (in part) or ``NOTE`` (served)."""
    where = f"{folder.name}/{name}"
    if not state.entries:
        return f"NOT SERVED {where}: {state.problem}"
    if "not served" in (state.problem or ""):
        return f"NOT SERVED {where} (in part): {state.problem}"
    return f"NOTE       {where}: {state.problem}"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver explain``."""
    p = argparse.ArgumentParser(
        prog="wlmserver explain",
        description="Show, for each worklist entry, whether it answers a query and which "
        "key stops it, using the server's own matching and its configuration (--config).",
        allow_abbrev=False,
    )
    p.add_argument(
        "database",
        nargs="?",
        type=Path,
        help="the database root (default: --config's data-files-path, else the bundled "
        "example, which it says)",
    )
    p.add_argument("-aec", "--call", help="the called AE title (default: every AE folder)")
    p.add_argument(
        "-aet",
        "--calling-aet",
        default="",
        help="the modality's calling AE title, which chooses the modality profile of --config",
    )
    add_config_option(p)
    add_query_options(p)
    server = p.add_argument_group(
        "the server's options (default: --config's, else the server's defaults)"
    )
    server.add_argument("--pn-case-insensitive", action="store_true")
    server.add_argument("--json-drops", action="store_true")
    server.add_argument("-dfr", "--disable-file-reject", action="store_true")
    server.add_argument(
        "--mpps-folder",
        metavar="DIR",
        help="the server's MPPS folder, whose reported statuses apply (default: --config's "
        "mpps-folder, else ROOT/.mpps)",
    )
    server.add_argument("--hide-status", metavar="STATUS[,STATUS]")
    server.add_argument("--retention-days", metavar="N")
    p.add_argument("--entry-patient-id", help="explain only the entries of this patient ID")
    p.add_argument("--entry-accession", help="explain only the entries of this accession number")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver explain``; 0 when some entry matches, 1 when none does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.database is not None:
        problem = _root_problem(args.database)
        if problem:
            parser.error(problem)
    args.all_keys = args.all_keys or False
    try:
        with warnings.catch_warnings():  # pydicom's "invalid value": the query's status says
            warnings.simplefilter("ignore", UserWarning)
            identifier = build_identifier(args)
    except UsageError as exc:
        parser.error(str(exc))
    loaded = load_for_tool(parser, args, args.database)
    config = loaded.config
    root = config.data_files_path
    mpps = read_mpps(config.mpps_path)
    print(sources_line(parser.prog, loaded, args.database is not None, mpps), file=sys.stderr)
    profile = config.profiles.for_calling(args.calling_aet)
    hidden = config.hide_statuses if profile.hide_statuses is None else profile.hide_statuses
    expand = (
        config.expand_empty_sps if profile.expand_empty_sps is None else profile.expand_empty_sps
    )
    pn_fold = config.pn_case_insensitive
    try:
        query = compile_query(
            identifier, pn_fold=pn_fold, expand_empty_sps=expand, matching=profile.matching
        )
        query, narrowed = narrow(
            query,
            station=args.calling_aet if profile.station_filter else None,
            dates=profile.dates(),
        )
    except QueryError as exc:
        print(f"the server answers this query with status 0x{int(exc.status):04X}: {exc.message}")
        return 1
    store = WorklistStore(
        root,
        reject_incomplete=config.reject_incomplete,
        json_drops=config.json_drops,
        max_file_size=config.max_file_size,
        follow_links=config.follow_links,
        workers=config.index_workers,
    )
    package_log = logging.getLogger("wlmserver")
    level = package_log.level
    package_log.setLevel(logging.ERROR)  # files not served are listed below, with the reason
    try:
        store.scan()
    finally:
        package_log.setLevel(level)
    snapshots = store.snapshots()
    folders = [f for f in snapshots if args.call is None or f.name == args.call]
    if not folders and args.call is not None and config.any_aet_folder:
        folders = [f for f in snapshots if f.name == config.any_aet_folder]
        if folders:
            print(
                f"NOTE   no AE folder {args.call!r}: the server serves --any-aet {folders[0].name}"
            )
    if not folders:
        if args.call is None:
            print(f"no AE folder in {root}: nothing is served")
        else:
            print(f"no AE folder {args.call!r} in {root}: the association would be rejected")
        return 1
    if not profile.is_neutral:
        calling = f"calling AE title {args.calling_aet!r}" if args.calling_aet else "no -aet"
        added = f"; it adds {'; '.join(narrowed)}" if narrowed else "; it adds no constraint"
        print(f"PROFILE {profile.name} ({calling}){added}")
    for line in return_key_lines(query):
        print(line)
    view = StatusView(mpps.steps, frozenset() if asks_for_status(query) else hidden)
    retention = config.retention
    today = datetime.date.today()
    wanted = EntryFilter(args.entry_patient_id, args.entry_accession)
    matched = shown = unserved = blocked = 0
    for folder in folders:
        for indexed in folder.entries:
            if wanted and not wanted.matches_record(indexed.top):
                continue
            shown += 1
            where = f"{folder.name}/{Path(indexed.path).name}#{indexed.item + 1}"
            if retention.hides(indexed, today):
                print(
                    f"NO     {where}: scheduled {scheduled_date(indexed)}, past retention "
                    f"(retention-days {retention.days}: steps before {retention.cutoff(today)} "
                    "are not served)"
                )
                continue
            entry = view.seen(indexed)
            if entry is None:
                status = view.status_of(indexed)
                source = "in the file" if view.reported(indexed) is None else "reported by an MPPS"
                print(
                    f"NO     {where}: status {status} ({source}) is hidden "
                    f"(hide-status {hidden_statuses(view.hidden)}; a query asking for a "
                    "status sees it)"
                )
                continue
            reasons = explain_entry(entry, query, pn_fold, profile)
            if not reasons:
                matched += 1
                print(f"MATCH  {where}")
            else:
                blocked += fails_only_outside_default(entry, query)
                print(f"NO     {where}: " + "; ".join(reasons))
        unserved += _print_unserved(store.root, folder, wanted)
    note = widened_note(query, profile, matched, blocked)
    if note:
        print(note)
    summary = f"{matched} of {shown} entries answer the query"
    if unserved:
        whose = f" that hold {wanted.describe()}" if wanted else ""
        summary += f"; {unserved} files{whose} are not served, or not in full (NOT SERVED above)"
    elif wanted and not shown:
        summary += f"; {_elsewhere(store.root, snapshots, folders, wanted)}"
    print(summary, file=sys.stderr)
    return 0 if matched else 1


def _root_problem(root: Path) -> str | None:
    """Why ``root`` is not a database root, saying what to give instead; None if it is one."""
    if root.is_dir():
        if Formats().holds_served_files(root) and not any(p.is_dir() for p in root.iterdir()):
            return (
                f"{root} is an AE folder (it holds .wl files), not a database root: use "
                f"wlmserver explain {root.parent} -aec {root.name}"
            )
        return None
    if root.exists():
        return (
            f"{root} is a file, not a database root: give the root it is in (wlmserver explain "
            f"{root.parent.parent} -aec {root.parent.name}); 'wlmserver check {root}' says "
            "whether it is served"
        )
    return f"{root} is not a database root (no such folder)"


def _print_unserved(root: Path, folder: FolderSnapshot, wanted: EntryFilter) -> int:
    """Print a line for each file of a folder that is not served, or not in full (those of
    the wanted entries only); return how many."""
    count = 0
    for name, state in sorted(folder.files.items()):
        if not state.problem:
            continue
        line = unserved_line(folder, name, state)
        if wanted:
            if state.entries:
                if not any(wanted.matches_record(e.top) for e in state.entries):
                    continue
            else:
                found = holds(root / folder.name / name, wanted)
                if found is False:
                    continue
                if found is None:
                    line += f" (too broken to read, but its bytes hold {wanted.describe()})"
        print(line)
        count += 1
    return count


def _elsewhere(
    root: Path,
    snapshots: Sequence[FolderSnapshot],
    chosen: Sequence[FolderSnapshot],
    wanted: EntryFilter,
) -> str:
    """Where the wanted entries are, when none is in the AE folders explained."""
    others = [
        f.name
        for f in snapshots
        if f not in chosen
        and (
            any(wanted.matches_record(e.top) for e in f.entries)
            or any(
                not state.entries and holds(root / f.name / name, wanted) is not False
                for name, state in f.files.items()
                if state.problem
            )
        )
    ]
    if others:
        return f"{wanted.describe()} is in AE folder {', '.join(others)}, not the one asked (-aec)"
    return f"no file in {root} holds {wanted.describe()}"
