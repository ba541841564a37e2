"""``wlmserver check``: say, offline, what the server would do with each worklist file.

Every ``.wl`` file of a database (``<root>/<AETitle>/*.wl``), of one AE folder, or one file is
read exactly as the server reads it (:class:`~wlmserver.store.formats.Formats`) and gets one
verdict:

``served``
    every scheduled procedure step of the file is served;
``warning``
    served, but something is likely wrong: a value that is not valid for its VR (PS3.5 6.2),
    a Scheduled Procedure Step ID used twice for the same Requested Procedure in one AE folder,
    a step scheduled more than ``--past-days`` days ago;
``not served``
    the file, or one of its steps, is not served: unparseable or cut short, text that does not
    decode in its Specific Character Set, no SPS item, a missing Type 1 attribute (PS3.4
    Table K.6-1).

Messages name the attribute and the rule, never the value (values are patient data). The exit
status is 1 when any file (or step) would not be served, else 0.

With ``--retention-days N`` (and ``--archive-folder DIR``), a retention report follows: per AE
folder, the steps a retention run would hide (file, item, SPS ID and scheduled date only) and
the files it would move to ``DIR/<AET>/`` (:mod:`wlmserver.store.retention`). The check changes
nothing: no file is moved, no folder made.
For a database whose MPPS messages are forwarded to a RIS (``--mpps-forward``), it also says
how the forwarding queue stands (:mod:`wlmserver.store.forward`): messages waiting, the age of
the oldest, messages the RIS refused for good (in ``forward/failed/``). The MPPS folder is
``<root>/.mpps`` unless ``--mpps-folder`` names the server's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.valuerep import validate_value

from wlmserver.config import bundled_database
from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import describe_tag
from wlmserver.matching.record import Record
from wlmserver.matching.retention import RetentionPolicy
from wlmserver.store.files import WorklistFileError
from wlmserver.store.formats import Formats
from wlmserver.store.forward import QueueState, forward_folder, queue_state
from wlmserver.store.index import is_safe_ae_title, unexpected_reason
from wlmserver.store.mpps import default_folder
from wlmserver.store.retention import FilePlan, archive_link_problem, archive_problem, plan_file

SERVED, WARNING, NOT_SERVED = "served", "warning", "not served"

_SPS_ID = 0x00400009
_START_DATE = 0x00400002
_REQUESTED_PROCEDURE_ID = 0x00401001
_STUDY_UID = 0x0020000D
_ACCESSION = 0x00080050

#: VRs whose values are checked against PS3.5 (pydicom's validation, which raises on errors).
_CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UR"}
)


@dataclass
class FileReport:
    """The verdict on one file.

    Attributes
    ----------
    path : str
        The file.
    folder : str
        Its AE folder (the called AE title that serves it).
    verdict : str
        ``served``, ``warning`` or ``not served``.
    entries : int
        How many scheduled procedure steps are served from it.
    problems : list of str
        Why it is not served, or what the warnings are.
    retention : FilePlan or None
        With a retention policy: its steps past retention, and whether the file would move.
    """

    path: str
    folder: str
    verdict: str = SERVED
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    retention: FilePlan | None = None

    def note(self, verdict: str, problem: str) -> None:
        """Add a problem; the verdict only gets worse."""
        self.problems.append(problem)
        order = (SERVED, WARNING, NOT_SERVED)
        if order.index(verdict) > order.index(self.verdict):
            self.verdict = verdict


def _name(tag: int) -> str:
    return describe_tag(tag)


def _invalid_values(record: Record, where: str = "") -> Iterator[str]:
    """One message per value that is not valid for its VR (nested sequences included)."""
    for tag, vr, value in record:
        if vr == "SQ":
            for n, item in enumerate(value):
                if isinstance(item, Record):
                    yield from _invalid_values(item, f"{where}{_name(tag)}[{n}] ")
            continue
        if vr not in _CHECKED_VRS:
            continue
        for text in value:
            try:
                validate_value(vr, text, pydicom_config.RAISE)
            except (ValueError, TypeError):
                yield f"{where}{_name(tag)}: not a valid {vr} value (length {len(str(text))})"


def _first(record: Record, tag: int) -> str:
    values = record.text(tag)
    return values[0] if values else ""


def check_file(
    path: Path, folder: str, *, reject_incomplete: bool = True, json_drops: bool = False
) -> tuple[FileReport, tuple[Entry, ...]]:
    """Read one file as the server does; its report and the entries it serves."""
    report = FileReport(str(path), folder)
    try:
        result = Formats.chosen(json_drops=json_drops).read(
            path, reject_incomplete=reject_incomplete
        )
    except WorklistFileError as exc:
        report.note(NOT_SERVED, str(exc))
        return report, ()
    except OSError as exc:
        report.note(NOT_SERVED, f"cannot read it ({exc.strerror or exc})")
        return report, ()
    except Exception as exc:  # as the server: one bad file is one file not served
        report.note(NOT_SERVED, unexpected_reason(exc))
        return report, ()
    report.entries = len(result.entries)
    for problem in result.problems:
        report.note(NOT_SERVED if reject_incomplete else WARNING, problem)
    seen: set[str] = set()
    for entry in result.entries:
        for message in (*_invalid_values(entry.top), *_invalid_values(entry.sps, "SPS: ")):
            if message not in seen:
                seen.add(message)
                report.note(WARNING, message)
    return report, result.entries


def _files(target: Path, json_drops: bool = False) -> Iterator[tuple[Path, str]]:
    """``(file, AE folder)`` for a database root, one AE folder, or one file."""
    served = Formats.chosen(json_drops=json_drops).serves

    if not target.is_dir():  # a file, or whatever else was named (the reader says what)
        yield target, target.parent.name
        return
    folders = [target] if any(served(p.name) for p in target.iterdir()) else []
    if not folders:
        folders = sorted(p for p in target.iterdir() if p.is_dir() and is_safe_ae_title(p.name))
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if served(path.name):  # not only regular files: the reader says why not
                yield path, folder.name


def check(
    target: Path,
    *,
    past_days: int | None = 30,
    today: date | None = None,
    reject_incomplete: bool = True,
    json_drops: bool = False,
    retention: RetentionPolicy | None = None,
    archive: bool = False,
) -> list[FileReport]:
    """Check every worklist file under ``target``.

    Parameters
    ----------
    target : Path
        A database root, an AE folder, or one ``.wl`` file.
    past_days : int or None
        Warn about steps scheduled more than this many days before ``today`` (None: never).
    today : date or None
        The reference day (default: today).
    reject_incomplete : bool
        As the server's default (``-efr``); ``False`` as with ``-dfr``.
    json_drops : bool
        Also check ``*.json`` drop files (as the server's ``--json-drops``).
    retention : RetentionPolicy or None
        Say which steps a retention run would hide (each report's ``retention``).
    archive : bool
        An archive folder is set: say which files a retention run would move.

    Returns
    -------
    list of FileReport
        In folder and file order.
    """
    today = today or date.today()
    oldest = (today - timedelta(days=past_days)).strftime("%Y%m%d") if past_days is not None else ""
    reports: list[FileReport] = []
    # (AE folder, requested procedure, SPS ID) -> the reports of the files holding it
    steps: dict[tuple[str, str, str], list[FileReport]] = {}
    for path, folder in _files(target, json_drops):
        report, entries = check_file(
            path, folder, reject_incomplete=reject_incomplete, json_drops=json_drops
        )
        reports.append(report)
        if retention is not None:
            report.retention = plan_file(
                folder, path.name, entries, retention, today, archive=archive
            )
        for entry in entries:
            sps_id = _first(entry.sps, _SPS_ID)
            if sps_id:
                procedure = "|".join(
                    _first(entry.top, tag)
                    for tag in (_STUDY_UID, _ACCESSION, _REQUESTED_PROCEDURE_ID)
                )
                steps.setdefault((folder, procedure, sps_id), []).append(report)
            start = _first(entry.sps, _START_DATE)
            if oldest and start and start[:8] < oldest:
                report.note(
                    WARNING,
                    f"SPS item {entry.item + 1} is scheduled more than {past_days} days ago",
                )
    for holders in steps.values():
        if len(holders) > 1:
            names = ", ".join(sorted({Path(r.path).name for r in holders}))
            for report in holders:
                report.note(
                    WARNING,
                    f"ScheduledProcedureStepID (0040,0009) used {len(holders)} times for one "
                    f"requested procedure ({names})",
                )
    for report in reports:  # one line per distinct problem
        report.problems = list(dict.fromkeys(report.problems))
    return reports


def summary(reports: Sequence[FileReport]) -> dict[str, int]:
    """Counts of files by verdict, and of served entries."""
    counts = {SERVED: 0, WARNING: 0, NOT_SERVED: 0}
    for report in reports:
        counts[report.verdict] += 1
    return {
        "files": len(reports),
        "served": counts[SERVED],
        "warnings": counts[WARNING],
        "not_served": counts[NOT_SERVED],
        "entries": sum(r.entries for r in reports),
    }


def format_text(reports: Sequence[FileReport], target: Path) -> str:
    """The human-readable report: one line per file with problems, then a summary."""
    lines = []
    for report in reports:
        if report.verdict == SERVED:
            continue
        lines.append(f"{report.verdict.upper():10} {report.path}")
        lines.extend(f"           - {problem}" for problem in report.problems)
    totals = summary(reports)
    folders = sorted({r.folder for r in reports})
    lines.append(
        f"{target}: {totals['files']} files in {len(folders)} AE folders "
        f"({', '.join(folders) or 'none'}): {totals['served']} served, "
        f"{totals['warnings']} served with warnings, {totals['not_served']} not served; "
        f"{totals['entries']} scheduled procedure steps served"
    )
    return "\n".join(lines)


def format_retention(
    reports: Sequence[FileReport], policy: RetentionPolicy, today: date, archive: Path | None
) -> str:
    """The retention report: per AE folder, the steps a run would hide and the files it would
    move (file names, item numbers, SPS IDs and dates only)."""
    cutoff = policy.cutoff(today)
    assert cutoff is not None
    lines = [
        f"retention --retention-days {policy.days}: steps scheduled before "
        f"{cutoff.isoformat()} would be hidden"
        + (f", files whose every step is would move to {archive}/<AET>/" if archive else "")
        + " (check changes nothing)"
    ]
    for folder in sorted({r.folder for r in reports}):
        plans = [(r.path, r.retention) for r in reports if r.folder == folder and r.retention]
        hidden = sum(len(plan.hidden) for _, plan in plans)
        moves = sum(1 for _, plan in plans if plan.moves)
        line = f"  {folder}: {hidden} steps would be hidden"
        linked = archive_link_problem(archive / folder) if archive and moves else None
        if linked is not None:  # a run refuses to follow it (see retention.move_to_archive)
            line += f", {moves} files would move but stay: {linked}"
        elif archive:
            line += f", {moves} files would move"
        lines.append(line)
        for path, plan in plans:
            steps = ", ".join(
                f"item {step.item}"
                + (f" SPS {step.sps_id}" if step.sps_id else "")
                + f" {step.start_date}"
                for step in plan.hidden
            )
            if plan.moves:
                fate = f"would move to {archive}/{folder}/"
            else:
                fate = f"{len(plan.hidden)} of {plan.served} steps hidden, the file stays"
            lines.append(f"    {path}: {steps} ({fate})")
    return "\n".join(lines)


def retention_document(
    reports: Sequence[FileReport], policy: RetentionPolicy, today: date, archive: Path | None
) -> dict[str, object]:
    """The retention report for ``--json``."""
    cutoff = policy.cutoff(today)
    folders: dict[str, dict[str, int]] = {}
    for report in reports:
        counts = folders.setdefault(report.folder, {"hidden": 0, "moves": 0})
        if report.retention is not None:
            counts["hidden"] += len(report.retention.hidden)
            counts["moves"] += int(report.retention.moves)
    return {
        "days": policy.days,
        "oldest_kept": cutoff.isoformat() if cutoff else None,
        "archive_folder": str(archive) if archive is not None else None,
        "folders": folders,
    }


def forwarding(target: Path, mpps_folder: Path | None) -> tuple[Path, QueueState] | None:
    """The MPPS forwarding queue of a database (its folder and state), or None when there is
    none (not a database root, or its MPPS messages were never forwarded)."""
    folder = mpps_folder
    if folder is None:
        if not target.is_dir():
            return None
        folder = default_folder(target)
    state = queue_state(folder)
    return None if state is None else (forward_folder(folder), state)


def format_forwarding(folder: Path, state: QueueState) -> str:
    """The queue's line of the text report.

    Examples
    --------
    >>> format_forwarding(Path("db/.mpps/forward"), QueueState(0, None, 1))
    'MPPS forwarding queue db/.mpps/forward: 0 queued, 1 failed (see db/.mpps/forward/failed)'
    """
    text = f"MPPS forwarding queue {folder}: {state.describe()}"
    if state.failed:
        text += f" (see {folder / 'failed'})"
    return text


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver check``."""
    p = argparse.ArgumentParser(
        prog="wlmserver check",
        description="Check worklist files offline: each is served, served with warnings, or "
        "not served, with the reason. Exit status 1 if anything would not be served.",
        allow_abbrev=False,
    )
    p.add_argument(
        "target",
        nargs="?",
        type=Path,
        help="a database root, an AE folder or a .wl file (default: the bundled example)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument(
        "--past-days",
        type=int,
        default=30,
        metavar="N",
        help="warn about steps scheduled more than N days ago (default 30; -1: never)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        metavar="N",
        help="also report which steps a server with --retention-days N would hide (scheduled "
        "more than N days ago), without changing anything",
    )
    p.add_argument(
        "--archive-folder",
        type=Path,
        metavar="DIR",
        help="with --retention-days: also report which files would move to DIR/<AET>/",
    )
    p.add_argument("--json-drops", action="store_true", help="also check *.json drop files")
    p.add_argument(
        "-dfr",
        "--disable-file-reject",
        action="store_true",
        help="as the server's option: incomplete steps are served (reported as warnings)",
    )
    p.add_argument(
        "--mpps-folder",
        type=Path,
        metavar="DIR",
        help="the server's --mpps-folder, for the state of its MPPS forwarding queue "
        "(default: ROOT/.mpps)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver check``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    target: Path = args.target or bundled_database()
    if not target.exists():
        parser.error(f"{target} does not exist")
    policy = _retention_policy(parser, args, target)
    today = date.today()
    archive: Path | None = args.archive_folder
    reports = check(
        target,
        past_days=None if args.past_days < 0 else args.past_days,
        today=today,
        reject_incomplete=not args.disable_file_reject,
        json_drops=args.json_drops,
        retention=policy,
        archive=archive is not None,
    )
    queue = forwarding(target, args.mpps_folder)
    if args.json:
        files = [asdict(r) for r in reports]
        if policy is None:
            for file in files:
                del file["retention"]
        document: dict[str, object] = {
            "target": str(target),
            "summary": summary(reports),
            "files": files,
        }
        if policy is not None:
            document["retention"] = retention_document(reports, policy, today, archive)
        if queue is not None:
            folder, state = queue
            document["mpps_forward"] = {
                "folder": str(folder),
                "pending": state.pending,
                "oldest_age_seconds": (
                    None if state.oldest is None else round(time.time() - state.oldest, 1)
                ),
                "failed": state.failed,
            }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(format_text(reports, target))
        if policy is not None:
            print(format_retention(reports, policy, today, archive))
        if queue is not None:
            print(format_forwarding(*queue))
    sys.stdout.flush()
    return 1 if any(r.verdict == NOT_SERVED for r in reports) else 0


def _retention_policy(
    parser: argparse.ArgumentParser, args: argparse.Namespace, target: Path
) -> RetentionPolicy | None:
    """The retention policy asked for, or None; the server's rules for the two options."""
    if args.retention_days is None:
        if args.archive_folder is not None:
            parser.error("--archive-folder needs --retention-days N")
        return None
    if args.retention_days < 1:
        parser.error("--retention-days must be a positive whole number")
    if args.archive_folder is not None:
        if not target.is_dir():  # one file: <root>/<AET>/<file>
            root = target.parent.parent
        elif Formats.chosen(json_drops=args.json_drops).holds_served_files(target):
            root = target.parent  # an AE folder
        else:
            root = target
        problem = archive_problem(args.archive_folder, root)
        if problem is not None:
            parser.error(f"--archive-folder {args.archive_folder}: {problem}")
    return RetentionPolicy(args.retention_days)
