"""``wlmserver create``: worklist files from what a RIS can emit (JSON, CSV, dcmdump text).

Reading the input forms, completing entries and merging the entries of one requested procedure
is :mod:`wlmserver.store.orders` (the store's JSON drops share it). This tool writes each
order's file to a temporary name in the AE folder, reads it back exactly as the server reads
it, and only then renames it to ``order-<key>.wl``
(:func:`~wlmserver.store.orders.order_file_name`; so writing the
same order again, in a later run, replaces its file). Merging happens within one run. Exit
status: 0 when every entry was written, 1 when any was refused (the others are still
written), 2 for usage errors.

The server reads the files as another user (docs/deploying.md), so their mode is
set explicitly, whatever the umask: 0640 in a setgid AE folder (the file gets the folder's
group, the server's), else 0644; an AE folder ``-o`` makes is 2750 under a setgid folder,
else 0755 (:mod:`wlmserver.store.dicomwrite`). A folder that only its owner can list is
named in a WARNING line: the server, running as another user, would serve nothing from it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from wlmserver.store.dicomwrite import make_served_folder, served_file_mode, write_atomically
from wlmserver.store.orders import (
    ENTRY_WORDS,
    READERS,
    WORKLIST_FILE_CLASS,
    EntryError,
    InputEntry,
    describe_entries,
    detect_format,
    file_name,
    plan_orders,
    read_entries,
)


def write_entry(ds: Dataset, folder: Path) -> Path:
    """Write one completed entry atomically into an AE folder, checked as the server reads it.

    The file is 0640 in a setgid AE folder (it gets the folder's group, the server's), else
    0644, and a folder made for it 2750 or 0755 (:func:`~wlmserver.store.dicomwrite.
    served_file_mode`): set explicitly, so that no umask makes it unreadable to the server.

    Raises
    ------
    EntryError
        The written file would not be served (the reason from the server's own reader).
    """

    make_served_folder(folder)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    final = folder / file_name(ds)

    from wlmserver.tools.check import NOT_SERVED, check_file  # the server's reader, via check

    def served(temporary: Path) -> None:
        report, _ = check_file(temporary, folder.name)
        if report.verdict == NOT_SERVED:
            raise EntryError(report.problems)

    write_atomically(final, ds, mode=served_file_mode(folder), check=served)
    return final


def build_parser() -> argparse.ArgumentParser:
    """The options of ``wlmserver create``."""
    p = argparse.ArgumentParser(
        prog="wlmserver create",
        description="Write worklist files from JSON (DICOM JSON or keywords), CSV or dcmdump "
        "text into an AE folder, atomically; entries that would be incomplete are refused. "
        "Entries of one requested procedure (the same AccessionNumber and "
        "RequestedProcedureID) in one run become one file with one SPS item per step.",
        allow_abbrev=False,
    )
    p.add_argument("input", nargs="+", help="input files ('-' reads standard input)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the AE folder to write into")
    p.add_argument("--format", choices=["auto", *READERS], default="auto")
    p.add_argument("--dry-run", action="store_true", help="check the entries, write nothing")
    p.add_argument(
        "--keep-station-case",
        action="store_true",
        help="write a ScheduledStationAETitle with lower-case letters as given (for a "
        "modality whose AE title really has them); by default it is refused, since AE "
        "titles match case-sensitively",
    )
    return p


def station_case_problems(ds: Dataset) -> list[str]:
    """One problem per Scheduled Station AE Title with lower-case letters.

    AE titles match case-sensitively (PS3.5 6.2; the server, as wlmscpfs): ``ct01`` is
    written, and a modality calling as ``CT01`` never sees the step, nor does a profile's
    station filter give it. Modalities' AE titles are upper case almost everywhere, so a
    lower-case one is far more likely a RIS's mistake than a modality's name: it is refused,
    saying what to type, rather than written (or upper-cased) silently.

    Examples
    --------
    >>> step = Dataset(); step.ScheduledStationAETitle = ["CT01", "ct02"]
    >>> ds = Dataset(); ds.ScheduledProcedureStepSequence = [step]
    >>> station_case_problems(ds)[0].split(";")[0]
    "ScheduledStationAETitle: 'ct02' has lower-case letters"
    """
    steps = list(ds.get("ScheduledProcedureStepSequence", None) or [])
    problems = []
    for n, step in enumerate(steps, start=1):
        value = step.get("ScheduledStationAETitle", None)
        values = [value] if isinstance(value, str) else list(value or [])
        for title in (str(v).strip() for v in values):
            if title != title.upper():
                label = f"SPS item {n}: " if len(steps) > 1 else ""
                problems.append(
                    f"{label}ScheduledStationAETitle: {title!r} has lower-case letters; AE "
                    f"titles are case-sensitive, so a modality calling as {title.upper()} "
                    f"would never see this step: did you mean {title.upper()}? "
                    "(--keep-station-case writes it as given)"
                )
    return problems


def _read_input(name: str, form: str) -> tuple[list[InputEntry], list[tuple[str, list[str]]]]:
    """The entries of one input (``form``: ``auto`` or a key of :data:`READERS`), and those
    that cannot be read on their own (a misspelled keyword ...): ``(label, problems)``.

    Raises
    ------
    OSError
        It cannot be read.
    EntryError
        It cannot be read as its format at all (the message says why).
    """
    path = None if name == "-" else Path(name)
    raw = sys.stdin.buffer.read() if path is None else path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # dump2dcm input in ISO_IR 100 and the like
        text = raw.decode("latin-1")
    fmt = detect_format(text, path) if form == "auto" else form
    try:
        read = list(read_entries(text, fmt))
    except (EntryError, ValueError, KeyError, TypeError) as exc:
        raise EntryError([f"cannot read it as {fmt} ({exc})"]) from None
    word = ENTRY_WORDS[fmt]
    if fmt == "json" and len(read) == 1:
        word = ""  # one object: the file is the entry
    entries, bad = [], []
    for n, item in enumerate(read, start=1):
        if isinstance(item, EntryError):
            bad.append((InputEntry(name, n, word, Dataset()).label, item.problems))
        else:
            entries.append(InputEntry(name, n, word, item))
    return entries, bad


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wlmserver create``; returns the exit status.

    No warning of pydicom's reaches stderr (they hold the value, patient data): what they
    warn about is refused with a message that names the attribute and says what to type.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _create(build_parser().parse_args(argv))


def _create(args: argparse.Namespace) -> int:
    from wlmserver.tools.check import readers_problem

    entries: list[InputEntry] = []
    unreadable = refused = 0
    for name in args.input:
        try:
            read, bad = _read_input(name, args.format)
        except OSError as exc:
            print(f"wlmserver create: {name}: {exc.strerror or exc}", file=sys.stderr)
            unreadable += 1
            continue
        except EntryError as exc:
            print(f"REFUSED {name}: {'; '.join(exc.problems)}", file=sys.stderr)
            unreadable += 1
            continue
        for label, problems in bad:
            print(f"REFUSED {label}: {'; '.join(problems)}", file=sys.stderr)
        refused += len(bad)
        entries.extend(read)
    total = len(entries) + refused
    files = steps = 0
    written: Path | None = None
    last_report = time.monotonic()
    for order in plan_orders(entries):
        label = describe_entries(order.entries)
        target = args.out / order.name
        try:
            problems = list(order.problems)
            if not args.keep_station_case:
                given = [order.dataset] if order.dataset is not None else []
                for ds in given or [entry.dataset for entry in order.entries]:
                    problems += station_case_problems(ds)
            if order.dataset is None or problems:
                raise EntryError(problems)
            if not args.dry_run:
                target = written = write_entry(order.dataset, args.out)
        except EntryError as exc:
            print(f"REFUSED {label}: {'; '.join(exc.problems)}", file=sys.stderr)
            refused += len(order.entries)
            continue
        files += 1
        steps += order.steps
        print(target)
        if len(order.entries) > 1:
            print(f"{target}: {order.steps} steps from {label}", file=sys.stderr)
        if time.monotonic() - last_report > 2:
            last_report = time.monotonic()
            print(f"... {files} files written, {refused} entries refused", file=sys.stderr)
    if written is not None:  # the folder's own mode can still keep the server out
        problem = readers_problem(written)
        if problem is not None:
            print(f"WARNING {args.out}: {problem}", file=sys.stderr)
    verb = "checked" if args.dry_run else "written"
    summary = (
        f"{files} files {verb} ({steps} steps from {total - refused} entries), "
        f"{refused} entries refused"
    )
    if unreadable:
        summary += f", {unreadable} inputs not read"
    print(summary, file=sys.stderr)
    return 1 if refused or unreadable else 0
