"""Time a restart with many MPPS instances: from ``python3 -m wlmserver`` to C-ECHO and C-FIND.

Makes (once) an MPPS folder of ``--instances`` instance files as the server writes them (half
IN PROGRESS, half COMPLETED, each performing a step of its own) beside a database of one
worklist file whose two steps are SPS001, performed and COMPLETED by one of the instances
(so hidden), and SPS002, not performed (so answered). Then starts
``wlmserver -dfp ROOT --mpps-folder DIR PORT`` and polls it: the seconds until the first
C-ECHO is answered (the port is open) and until the first correct C-FIND answer (one step:
the MPPS statuses are read by then), the resident memory then, and the server's own line
saying how long reading the instances took; stops it with SIGTERM (as systemd does: it
writes the MPPS index file). The polls are bounded by ``--timeout``.

``--mode``: ``first`` removes the index file first (a first start, or one after the index
file was lost: every instance is read); ``clean`` keeps it (a restart after a clean stop);
``stale`` keeps it and touches ``--stale`` instance files (a restart after kill -9: those
are read again).

Example (the figure in docs/performance.md)::

    python3 tools/mpps_restart.py --instances 100000 --mode first --mode clean --mode stale
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port
from restart import rss_mb

MPPS = "1.2.840.10008.3.1.2.3.3"
FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"
STUDY = "1.2.826.0.1.3680043.10.9999.1"
#: Instance UIDs: this prefix and 9 digits, so every file is the template with its digits.
PREFIX = "1.2.826.0.1.3680043.10.9999.7."


def _template(status: str, uid: str, sps: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MPPS
    ds.SOPInstanceUID = uid
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID001"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = []
    item = Dataset()
    item.StudyInstanceUID = STUDY
    item.ReferencedStudySequence = []
    item.AccessionNumber = "ACC001"
    item.RequestedProcedureID = "RP001"
    item.RequestedProcedureDescription = "CT HEAD"
    item.ScheduledProcedureStepID = sps
    item.ScheduledProcedureStepDescription = "HEAD"
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS001"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CTROOM1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261122"
    ds.PerformedProcedureStepStartTime = "101700"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261122" if status == "COMPLETED" else ""
    ds.PerformedProcedureStepEndTime = "103000" if status == "COMPLETED" else ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedSeriesSequence = []
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MPPS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def make_folder(folder: Path, count: int) -> None:
    """``count`` instance files (made once: kept when the folder holds them already)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = sum(1 for name in os.listdir(folder) if name.endswith(".dcm"))
    if held == count:
        return
    for name in os.listdir(folder):
        if name.endswith(".dcm") or name == ".mpps-index":
            (folder / name).unlink()
    marker = b"999999999"
    templates = {
        status: _template(status, PREFIX + marker.decode(), "S" + marker.decode())
        for status in ("IN PROGRESS", "COMPLETED")
    }
    for n in range(count):
        digits = b"%09d" % (100_000_000 + n)  # nine digits, no leading zero (PS3.5 9.1)
        status = "COMPLETED" if n % 2 else "IN PROGRESS"
        data = templates[status].replace(b"." + marker + b"\0", b"." + digits + b"\0")
        data = data.replace(b"S" + marker, b"SPS001    " if n == 1 else b"S" + digits)
        (folder / f"{PREFIX}{digits.decode()}.dcm").write_bytes(data)


def make_database(root: Path) -> None:
    """One AE folder, WLM, with one file of two steps: SPS001 (performed) and SPS002."""
    (root / "WLM").mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID001"
    ds.AccessionNumber = "ACC001"
    ds.StudyInstanceUID = STUDY
    ds.RequestedProcedureID = "RP001"
    ds.RequestedProcedureDescription = "CT HEAD"
    steps = []
    for sps in ("SPS001", "SPS002"):
        item = Dataset()
        item.ScheduledStationAETitle = "CT01"
        item.ScheduledProcedureStepStartDate = "20261122"
        item.ScheduledProcedureStepStartTime = "101500"
        item.Modality = "CT"
        item.ScheduledProcedureStepID = sps
        item.ScheduledProcedureStepDescription = "HEAD"
        steps.append(item)
    ds.ScheduledProcedureStepSequence = steps
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.31")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.10.9999.8.1")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(root / "WLM" / "a.wl", ds, enforce_file_format=True)


def echoed(port: int) -> bool:
    """Whether a C-ECHO is answered."""
    ae = AE(ae_title="RESTART")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return status is not None and int(status.Status) == 0
    finally:
        assoc.release()


def found(port: int) -> int | None:
    """How many steps a C-FIND for PID001 gets (None: not answered with Success)."""
    ae = AE(ae_title="RESTART")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    if not assoc.is_established:
        return None
    query = Dataset()
    query.PatientID = "PID001"
    query.ScheduledProcedureStepSequence = [Dataset()]
    count = 0
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            if status is None:
                return None
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                count += 1
            elif status.Status != 0:
                return None
    finally:
        assoc.release()
    return count


def one_start(root: Path, folder: Path, timeout: float) -> dict[str, object]:
    """Start, wait for C-ECHO then the correct C-FIND, stop with SIGTERM; what was measured."""
    port = free_port()
    command = [
        sys.executable, "-m", "wlmserver", "-dfp", str(root), "--mpps-folder", str(folder),
        "--no-index-cache", "--index-workers", "0", str(port),
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    result: dict[str, object] = {}
    try:
        deadline = started + timeout
        while "echo" not in result or "find" not in result:
            if process.poll() is not None:
                raise SystemExit(f"wlmserver exited: {process.communicate()[1]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer within {timeout} s: {result}")
            try:
                if "echo" not in result and echoed(port):
                    result["echo"] = time.monotonic() - started
                if "echo" in result:
                    got = found(port)
                    if got is not None and got != 1:
                        raise SystemExit(f"{got} steps answered, expected 1 (SPS002)")
                    if got == 1:
                        result["find"] = time.monotonic() - started
            except (OSError, RuntimeError):
                pass
            time.sleep(0.01)
        result["rss_mb"] = rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=600)
    said = re.search(r"MPPS: (\d+) instances .*?; (\d+) files read.*? in ([0-9.]+) s", err)
    if said:
        result["instances"], result["read"] = int(said.group(1)), int(said.group(2))
        result["load_s"] = float(said.group(3))
    if process.returncode != 0:
        raise SystemExit(f"wlmserver exited with {process.returncode}: {err}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Make the folder and database, run the starts asked for, one line each."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--instances", type=int, default=100_000, help="MPPS instances (100,000)")
    p.add_argument("--work", type=Path, help="where to make them (default /tmp/wlm-mpps-N)")
    p.add_argument(
        "--mode", action="append", choices=["first", "clean", "stale"], help="(repeatable)"
    )
    p.add_argument("--stale", type=int, default=1000, help="files touched for --mode stale")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per start at most")
    args = p.parse_args(argv)
    work = args.work or Path(f"/tmp/wlm-mpps-{args.instances}")
    root, folder = work / "db", work / "mpps"
    make_database(root)
    made = time.monotonic()
    make_folder(folder, args.instances)
    print(f"{args.instances} instances in {folder} (made in {time.monotonic() - made:.1f} s)")
    for mode in args.mode or ["first", "clean"]:
        index = folder / ".mpps-index"
        if mode == "first":
            index.unlink(missing_ok=True)
        elif mode == "stale":
            if not index.exists():
                one_start(root, folder, args.timeout)  # a clean stop writes it
            names = sorted(n for n in os.listdir(folder) if n.endswith(".dcm"))
            for name in names[: args.stale]:
                os.utime(folder / name)
        r = one_start(root, folder, args.timeout)
        print(
            f"{mode}: C-ECHO {r['echo']:.2f} s, C-FIND {r['find']:.2f} s after the process "
            f"started; instances read in {r.get('load_s', float('nan')):.2f} s "
            f"({r.get('read', '?')} files read, the others from the index file); "
            f"RSS {r['rss_mb']:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
