"""``wlmserver check``: say, offline, what the server would do with each worklist file.

Every ``.wl`` file of a database (``<root>/<AETitle>/*.wl``), of one AE folder, or one file is
read exactly as the server reads it (:class:`~wlmserver.store.formats.Formats`) and gets one
verdict:

``served``
    every scheduled procedure step of the file is served;
``warning``
    served, but something is likely wrong: a value that is not valid for its VR (PS3.5 6.2),
    a Scheduled Procedure Step ID used twice for the same Requested Procedure in one AE folder,
    a step scheduled more than ``--past-days`` days ago, a file that only its owner can read
    (or in a folder only its owner can list: a server running as another user, as it should,
    does not serve it; :func:`readers_problem`);
``not served``
    the file, or one of its steps, is not served: unparseable or cut short, text that does not
    decode in its Specific Character Set, no SPS item, a missing Type 1 attribute (PS3.4
    Table K.6-1), or it cannot be read by the user running ``check`` (run it as the server's
    user, as docs/deploying.md does, to judge as the server).

Messages name the attribute and the rule, never the value (values are patient data). The exit
status is 1 when any file (or step) would not be served, else 0.

The configuration is the server's (``--config FILE``, read by the server's own loader, see
:mod:`wlmserver.tools.configured`): the database, ``-dfr``, JSON drops, retention and the
statuses it hides. A step the server does not answer because of its status (the file's, or
the one a modality reported in the MPPS folder) is not counted as served: it is reported
apart, as hidden, with the status and where it comes from.

With ``--retention-days N`` (and ``--archive-folder DIR``), a retention report follows: per AE
folder, the steps a retention run would hide (file, item, SPS ID and scheduled date only) and
the files it would move to ``DIR/<AET>/`` (:mod:`wlmserver.store.retention`). The check changes
nothing: no file is moved, no folder made.
For a database whose MPPS messages are forwarded to a RIS (``--mpps-forward``), it also says
how the forwarding queue stands (:mod:`wlmserver.store.forward`): messages waiting, the age of
the oldest, messages being retried after the RIS refused them for now, messages refused for
good or set aside after tries (in ``forward/failed/``). The MPPS folder is the configured one
(``--mpps-folder``, or ``--config``'s), else ``<root>/.mpps``.

Then how full the folders the server writes are, against its bounds (:func:`storage`): the
MPPS folder (instances and bytes, and how many are archived), the forwarding queue (messages
and bytes) and the request-capture folder (``--request-file-path``); ``FULL`` where a limit is
reached (the server then refuses new MPPS with 0x0213, or captures no more). The limits are the
server's defaults, or its configuration file's with ``--config FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

from wlmserver.config import Config
from wlmserver.config.loader import Loaded
from wlmserver.matching.entry import Entry
from wlmserver.matching.keys import describe_tag
from wlmserver.matching.record import Record
from wlmserver.matching.retention import RetentionPolicy
from wlmserver.matching.stepstatus import StatusView
from wlmserver.store.files import DEFAULT_MAX_FILE_SIZE, WorklistFileError
from wlmserver.store.formats import Formats
from wlmserver.store.forward import QueueState, Usage, forward_folder, queue_state, queue_usage
from wlmserver.store.index import is_safe_ae_title, unexpected_reason
from wlmserver.store.mpps import folder_usage
from wlmserver.store.retention import FilePlan, archive_link_problem, plan_file
from wlmserver.store.valuerules import RULES, value_problem
from wlmserver.tools.configured import (
    add_config_option,
    hidden_statuses,
    load_for_tool,
    read_mpps,
    sources_line,
)

SERVED, WARNING, NOT_SERVED = "served", "warning", "not served"

_SPS_ID = 0x00400009
_START_DATE = 0x00400002
_REQUESTED_PROCEDURE_ID = 0x00401001
_STUDY_UID = 0x0020000D
_ACCESSION = 0x00080050


@dataclass(frozen=True)
class StatusHidden:
    """A step not answered because of its status (no patient data).

    Attributes
    ----------
    item : int
        Its item in the file's Scheduled Procedure Step Sequence, counted from 1.
    sps_id : str
        Its Scheduled Procedure Step ID, or ``""``.
    status : str
        Its status as the server answers it.
    reported : bool
        Whether a modality reported it (an MPPS), rather than the file saying so.
    """

    item: int
    sps_id: str
    status: str
    reported: bool


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
    hidden : list of StatusHidden
        Its steps the server does not answer because of their status.
    """

    path: str
    folder: str
    verdict: str = SERVED
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    retention: FilePlan | None = None
    hidden: list[StatusHidden] = field(default_factory=list)

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
        if vr not in RULES:
            continue
        for text in value:
            problem = value_problem(vr, text)
            if problem is not None:
                yield f"{where}{_name(tag)}: {problem}"


def _first(record: Record, tag: int) -> str:
    values = record.text(tag)
    return values[0] if values else ""


def check_file(
    path: Path,
    folder: str,
    *,
    reject_incomplete: bool = True,
    json_drops: bool = False,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
) -> tuple[FileReport, tuple[Entry, ...]]:
    """Read one file as the server does; its report and the entries it serves."""
    report = FileReport(str(path), folder)
    try:
        result = Formats.chosen(json_drops=json_drops).read(
            path, reject_incomplete=reject_incomplete, max_size=max_file_size
        )
    except WorklistFileError as exc:
        report.note(NOT_SERVED, str(exc))
        return report, ()
    except OSError as exc:
        owner = f": {_owner_and_mode(path)}" if isinstance(exc, PermissionError) else ""
        report.note(NOT_SERVED, f"cannot read it ({exc.strerror or exc}){owner}")
        return report, ()
    except Exception as exc:  # as the server: one bad file is one file not served
        report.note(NOT_SERVED, unexpected_reason(exc))
        return report, ()
    problem = readers_problem(path)
    if problem is not None:
        report.note(WARNING, problem)
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


def _name_of(number: int, names: Callable[[int], str]) -> str:
    try:
        return names(number)
    except (KeyError, OverflowError):
        return str(number)


def _user(uid: int) -> str:
    return _name_of(uid, lambda n: pwd.getpwuid(n).pw_name)


def _group(gid: int) -> str:
    return _name_of(gid, lambda n: grp.getgrgid(n).gr_name)


def _owner_and_mode(path: Path) -> str:
    """``mode 0600, risexport:wlmdata`` (or ``""`` when it cannot be told)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"mode {stat.S_IMODE(st.st_mode):04o}, {_user(st.st_uid)}:{_group(st.st_gid)}"


def readers_problem(path: Path) -> str | None:
    """Why a server running as another user than the file's writer could not read it,
    judged from the modes of the file and of its AE folder, or None.

    The server's user is not known here, nor need it be the one running ``check`` (root, the
    RIS export's user): it is taken to be another user than the file's owner, who reaches the
    folder through its group or as anyone (docs/deploying.md: the database is ``risexport:wlmdata``
    2750, files 0640, the server in ``wlmdata``). A file that only its owner can read is
    served only by a server running as that owner.
    """
    try:
        file, folder = path.stat(), path.parent.stat()
    except OSError:
        return None
    anyone = folder.st_mode & 0o005 == 0o005  # list the folder and open its files
    group = folder.st_mode & 0o050 == 0o050
    if not (anyone or group):
        return (
            f"its folder {path.parent} can be listed by its owner only "
            f"({_owner_and_mode(path.parent)}): a server running as another user serves "
            "nothing from it; make it 2750 with the server's group (or 0755)"
        )
    if file.st_mode & 0o004:
        return None
    if file.st_mode & 0o040:
        if anyone or file.st_gid == folder.st_gid:
            return None
        return (
            f"readable by its group {_group(file.st_gid)} only ({_owner_and_mode(path)}), "
            f"but its folder admits the group {_group(folder.st_gid)}: the server must be in "
            f"both; chgrp {_group(folder.st_gid)} (a file made in a setgid folder gets its "
            "group)"
        )
    return (
        f"only its owner can read it ({_owner_and_mode(path)}): a server running as another "
        "user does not serve it; make it readable by the server's group (chmod 0640, and "
        "umask 027 where it is written) or by all (0644)"
    )


def _files(target: Path, json_drops: bool = False) -> Iterator[tuple[Path, str]]:
    """``(file, AE folder)`` for a database root, one AE folder, or one file."""
    served = Formats.chosen(json_drops=json_drops).serves

    if not target.is_dir():  # a file, or whatever else was named (the reader says what)
        yield target, target.absolute().parent.name
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
    statuses: StatusView | None = None,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
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
    statuses : StatusView or None
        The statuses the server hides, and those modalities reported: steps so hidden are
        not served (each report's ``hidden``).
    max_file_size : int
        As the server's ``--max-file-size`` (in bytes).

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
            path,
            folder,
            reject_incomplete=reject_incomplete,
            json_drops=json_drops,
            max_file_size=max_file_size,
        )
        reports.append(report)
        past = retention.hider(today) if retention is not None else None
        if retention is not None:
            report.retention = plan_file(
                folder, path.name, entries, retention, today, archive=archive
            )
        served = [e for e in entries if past is None or not past(e)]  # as the server: first
        if statuses is not None and not statuses.changes_nothing:
            for entry in list(served):
                if statuses.seen(entry) is None:
                    served.remove(entry)
                    report.hidden.append(
                        StatusHidden(
                            entry.item + 1,
                            _first(entry.sps, _SPS_ID),
                            statuses.status_of(entry),
                            statuses.reported(entry) is not None,
                        )
                    )
        report.entries = len(served)
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
        "hidden_by_status": sum(len(r.hidden) for r in reports),
        "past_retention": sum(len(r.retention.hidden) for r in reports if r.retention),
    }


def format_text(
    reports: Sequence[FileReport], target: Path, hidden: frozenset[str] | None = None
) -> str:
    """The human-readable report: one line per file with problems, the steps hidden by
    their status (``hidden``: the statuses the server hides), then a summary."""
    lines = []
    for report in reports:
        if report.verdict == SERVED:
            continue
        lines.append(f"{report.verdict.upper():10} {report.path}")
        lines.extend(f"           - {problem}" for problem in report.problems)
    if any(r.hidden for r in reports):
        lines.append(
            f"HIDDEN     steps the server does not answer (hide-status "
            f"{hidden_statuses(hidden or ())}; a query asking for a status gets them):"
        )
        for report in reports:
            for step in report.hidden:
                source = "reported by an MPPS" if step.reported else "in the file"
                sps = f" (SPS {step.sps_id})" if step.sps_id else ""
                lines.append(
                    f"           - {report.path}: SPS item {step.item}{sps}: status "
                    f"{step.status} ({source})"
                )
    totals = summary(reports)
    folders = sorted({r.folder for r in reports})
    apart = [
        f"{totals[key]} {words}"
        for key, words in (
            ("hidden_by_status", "hidden by their status"),
            ("past_retention", "past retention"),
        )
        if totals[key]
    ]
    lines.append(
        f"{target}: {totals['files']} files in {len(folders)} AE folders "
        f"({', '.join(folders) or 'none'}): {totals['served']} served, "
        f"{totals['warnings']} served with warnings, {totals['not_served']} not served; "
        f"{totals['entries']} scheduled procedure steps served"
        + (f" ({', '.join(apart)}, not served)" if apart else "")
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


def forwarding(mpps_folder: Path) -> tuple[Path, QueueState] | None:
    """The MPPS forwarding queue of the server's MPPS folder (its folder and state), or None
    when there is none (its MPPS messages were never forwarded)."""
    state = queue_state(mpps_folder)
    return None if state is None else (forward_folder(mpps_folder), state)


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


@dataclass
class FolderUsage:
    """How full one folder the server writes is.

    Attributes
    ----------
    what : str
        ``mpps``, ``mpps_forward`` or ``captures``.
    folder : str
        The folder.
    usage : Usage
        Its count and bytes against the limits.
    archived : int or None
        For the MPPS folder: the instances in its archive.
    """

    what: str
    folder: str
    usage: Usage
    archived: int | None = None

    @property
    def full(self) -> bool:
        """Whether a limit is reached."""
        u = self.usage
        return u.count >= u.max_count or u.size >= u.max_size


def storage(config: Config) -> list[FolderUsage]:
    """How full the MPPS folder, its forwarding queue and the request-capture folder of the
    server's configuration are (those that exist), against its limits."""
    mpps = config.mpps_path
    captures = config.request_file_path
    found: list[FolderUsage] = []
    held = folder_usage(mpps, config.mpps_limits)
    if held is not None:
        found.append(FolderUsage("mpps", str(mpps), held[0], held[1]))
    queue = queue_usage(mpps, config.forward_limits)
    if queue is not None:
        found.append(FolderUsage("mpps_forward", str(forward_folder(mpps)), queue))
    if captures is not None and captures.is_dir():
        files, size = _files_in(captures)
        limits = Usage(files, size, config.max_capture_files, config.max_capture_size)
        found.append(FolderUsage("captures", str(captures), limits))
    return found


def _files_in(folder: Path) -> tuple[int, int]:
    """The files of a folder (not its subfolders) and their bytes."""
    files = size = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    files += 1
                    size += entry.stat(follow_symlinks=False).st_size
    return files, size


def format_storage(found: Sequence[FolderUsage]) -> list[str]:
    """The storage lines of the text report.

    Examples
    --------
    >>> (line,) = format_storage([FolderUsage("captures", "rq", Usage(10, 0, 10, 1 << 20))])
    >>> line[:41], line[-30:]
    ('request captures rq: 10 files (limit 10, ', '0%) FULL: no more are captured')
    """
    names = {
        "mpps": ("MPPS folder", "instances", "new N-CREATEs are refused (0x0213)"),
        "mpps_forward": ("MPPS forwarding queue", "messages", "N-CREATE and N-SET are refused"),
        "captures": ("request captures", "files", "no more are captured"),
    }
    lines = []
    for one in found:
        title, things, consequence = names[one.what]
        line = f"{title} {one.folder}: {one.usage.describe(things)}"
        if one.archived:
            line += f"; {one.archived} archived"
        if one.full:
            line += f" FULL: {consequence}"
        lines.append(line)
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver check``."""
    p = argparse.ArgumentParser(
        prog="wlmserver check",
        description="Check worklist files offline as the server would serve them: each is "
        "served, served with warnings, or not served, with the reason; steps the server "
        "hides by their status are reported apart. Exit status 1 if anything would not be "
        "served.",
        allow_abbrev=False,
    )
    p.add_argument(
        "target",
        nargs="?",
        type=Path,
        help="a database root, an AE folder or a .wl file (default: --config's "
        "data-files-path, else the bundled example, which it says)",
    )
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument(
        "--past-days",
        type=int,
        default=30,
        metavar="N",
        help="warn about steps scheduled more than N days ago (default 30; -1: never)",
    )
    server = p.add_argument_group(
        "the server's options (default: --config's, else the server's defaults)"
    )
    server.add_argument(
        "--retention-days",
        metavar="N",
        help="also report which steps a server with --retention-days N hides (scheduled "
        "more than N days ago), without changing anything",
    )
    server.add_argument(
        "--archive-folder",
        metavar="DIR",
        help="with --retention-days: also report which files would move to DIR/<AET>/",
    )
    server.add_argument("--json-drops", action="store_true", help="also check *.json drop files")
    server.add_argument(
        "-dfr",
        "--disable-file-reject",
        action="store_true",
        help="incomplete steps are served (reported as warnings)",
    )
    server.add_argument(
        "--mpps-folder",
        metavar="DIR",
        help="the server's MPPS folder: the statuses modalities reported there apply, and "
        "its forwarding queue is reported (default: ROOT/.mpps)",
    )
    server.add_argument(
        "--hide-status",
        metavar="STATUS[,STATUS]",
        help="the statuses the server hides (default COMPLETED,DISCONTINUED)",
    )
    add_storage_options(p)
    return p


def database_root(target: Path, json_drops: bool = False) -> Path:
    """The database root of a check's target: the root itself, an AE folder's parent, or a
    file's AE folder's parent (``x.wl`` in the current folder: its parent's parent)."""
    target = target.absolute()
    if not target.is_dir():  # one file: <root>/<AET>/<file>
        return target.parent.parent
    if Formats.chosen(json_drops=json_drops).holds_served_files(target):
        return target.parent  # an AE folder
    return target


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """The options of the storage report (:func:`storage`)."""
    p.add_argument(
        "--request-file-path",
        type=Path,
        metavar="DIR",
        help="the server's -rfp folder, for how full it is",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver check``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target is not None and not args.target.exists():
        parser.error(f"{args.target} does not exist")
    root = None if args.target is None else database_root(args.target, args.json_drops)
    loaded = load_for_tool(parser, args, root)
    config = loaded.config
    target: Path = args.target or config.data_files_path
    mpps = read_mpps(config.mpps_path)
    print(sources_line(parser.prog, loaded, args.target is not None, mpps), file=sys.stderr)
    policy = config.retention if config.retention_days is not None else None
    today = date.today()
    archive = config.archive_folder
    reports = check(
        target,
        past_days=None if args.past_days < 0 else args.past_days,
        today=today,
        reject_incomplete=config.reject_incomplete,
        json_drops=config.json_drops,
        retention=policy,
        archive=archive is not None,
        statuses=StatusView(mpps.steps, config.hide_statuses),
        max_file_size=config.max_file_size,
    )
    queue = forwarding(config.mpps_path)
    stored = storage(config)
    if args.json:
        document = _document(loaded, target, reports, policy, today, queue)
        if stored:
            document["storage"] = {
                one.what: {"folder": one.folder, **asdict(one.usage), "full": one.full}
                | ({"archived": one.archived} if one.archived is not None else {})
                for one in stored
            }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(format_text(reports, target, config.hide_statuses))
        if policy is not None:
            print(format_retention(reports, policy, today, archive))
        if queue is not None:
            print(format_forwarding(*queue))
        for line in format_storage(stored):
            print(line)
    sys.stdout.flush()
    return 1 if any(r.verdict == NOT_SERVED for r in reports) else 0


def _document(
    loaded: Loaded,
    target: Path,
    reports: Sequence[FileReport],
    policy: RetentionPolicy | None,
    today: date,
    queue: tuple[Path, QueueState] | None,
) -> dict[str, object]:
    """The ``--json`` report."""
    config = loaded.config
    files = [asdict(r) for r in reports]
    if policy is None:
        for file in files:
            del file["retention"]
    document: dict[str, object] = {
        "target": str(target),
        "database": str(config.data_files_path),
        "mpps_folder": str(config.mpps_path),
        "hide_status": sorted(config.hide_statuses),
        "summary": summary(reports),
        "files": files,
    }
    if policy is not None:
        document["retention"] = retention_document(reports, policy, today, config.archive_folder)
    if queue is not None:
        folder, state = queue
        document["mpps_forward"] = {
            "folder": str(folder),
            "pending": state.pending,
            "oldest_age_seconds": (
                None if state.oldest is None else round(time.time() - state.oldest, 1)
            ),
            "retrying": state.retrying,
            "failed": state.failed,
        }
    return document
