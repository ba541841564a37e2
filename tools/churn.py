"""Churn under load: clients query a real server while its files are created, replaced, renamed
and deleted; every answer must be a complete version of its file, and nothing may be lost.

A server process is started on a temporary database (one AE folder, ``CHURN``). Each file is
one order whose PatientID names it (``K0001``...) and whose version is written twice, as
RequestedProcedureID ``V000042`` and as the SPS item's ScheduledProcedureStepDescription
``VERSION 000042``: an answer whose two disagree was read from a torn file. While ``--clients``
threads query the whole folder over and over, one writer thread applies ``--operations``
random operations: create (atomic rename into place), replace by atomic rename, rewrite in
place (same length, two writes), rename, delete. At the end, once the watcher has settled, a
query must answer exactly the files on disk, at their last version. The server's log must hold
no traceback or error, and its memory (RSS, from /proc) should end roughly where it began.

Usage::

    python3 tools/churn.py [--operations 10000] [--clients 8] [--files 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE

MWL_FIND = "1.2.840.10008.5.1.4.31"
AET = "CHURN"
ROOT = Path(__file__).resolve().parent.parent
LOG_PROBLEMS = ("Traceback", " ERROR ", "CRITICAL", "Exception")


# ---------------------------------------------------------------- the files
def order_bytes(key: str, version: int) -> bytes:
    """One order file's bytes: ``key`` as PatientID, ``version`` in two attributes (always
    the same length, so an in-place rewrite keeps the file's size)."""
    ds = Dataset()
    ds.PatientName = f"CHURN^{key}"
    ds.PatientID = key
    ds.AccessionNumber = f"A{key}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.9999.{int(key[1:])}"
    ds.RequestedProcedureID = f"V{version:06}"
    ds.RequestedProcedureDescription = "CT HEAD"
    step = Dataset()
    step.ScheduledStationAETitle = "CT01"
    step.ScheduledProcedureStepStartDate = "20261122"
    step.ScheduledProcedureStepStartTime = "101500"
    step.Modality = "CT"
    step.ScheduledProcedureStepID = "S1"
    step.ScheduledProcedureStepDescription = f"VERSION {version:06}"
    ds.ScheduledProcedureStepSequence = [step]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
    meta.MediaStorageSOPInstanceUID = UID(f"1.2.3.{int(key[1:])}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Folder:
    """The writer's view of the AE folder: which file holds which key at which version."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.files: dict[str, tuple[str, int]] = {}  # file name -> (key, version)
        self.written: dict[str, set[int]] = {}  # key -> every version ever written
        self.next_key = 0
        self.next_name = 0
        self.counts: dict[str, int] = {}

    def _name(self) -> str:
        self.next_name += 1
        return f"f{self.next_name:06}.wl"

    def _write_atomic(self, name: str, data: bytes) -> None:
        temporary = self.path / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.path / name)

    def _version(self, key: str) -> int:
        version = max(self.written.get(key, {0})) + 1
        self.written.setdefault(key, set()).add(version)
        return version

    def create(self) -> None:
        self.next_key += 1
        key = f"K{self.next_key:04}"
        name, version = self._name(), self._version(key)
        self._write_atomic(name, order_bytes(key, version))
        self.files[name] = (key, version)

    def replace(self) -> None:
        name = self.rng.choice(sorted(self.files))
        key = self.files[name][0]
        version = self._version(key)
        self._write_atomic(name, order_bytes(key, version))
        self.files[name] = (key, version)

    def rewrite(self) -> None:
        """In place: the same length, written in two halves with a pause between."""
        name = self.rng.choice(sorted(self.files))
        key = self.files[name][0]
        version = self._version(key)
        data = order_bytes(key, version)
        with open(self.path / name, "r+b") as handle:
            half = len(data) // 2
            handle.write(data[:half])
            handle.flush()
            time.sleep(0.001)
            handle.write(data[half:])
            handle.truncate()
        self.files[name] = (key, version)

    def rename(self) -> None:
        name = self.rng.choice(sorted(self.files))
        new = self._name()
        os.rename(self.path / name, self.path / new)
        self.files[new] = self.files.pop(name)

    def delete(self) -> None:
        name = self.rng.choice(sorted(self.files))
        os.unlink(self.path / name)
        del self.files[name]

    def operate(self, target_files: int) -> str:
        """One random operation (creating when there are few files, deleting when many)."""
        if len(self.files) < target_files // 2:
            kind = "create"
        else:
            kinds = ["create", "replace", "replace", "rewrite", "rewrite", "rename", "delete"]
            if len(self.files) > target_files * 3 // 2:
                kinds = ["delete", "replace", "rewrite", "rename"]
            kind = self.rng.choice(kinds)
        getattr(self, kind)()
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return kind

    def expected(self) -> set[tuple[str, int]]:
        """What a query must answer now: (key, version) of every file."""
        return set(self.files.values())


# ---------------------------------------------------------------- the server
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (from /proc; 0 where unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def query(port: int, timeout: float = 30.0) -> list[tuple[str, str, str]]:
    """Every entry of the folder: (PatientID, RequestedProcedureID, SPS description).

    Raises
    ------
    RuntimeError
        No association, or no Success at the end.
    """
    identifier = Dataset()
    identifier.PatientID = ""
    identifier.RequestedProcedureID = ""
    step = Dataset()
    step.ScheduledProcedureStepDescription = ""
    identifier.ScheduledProcedureStepSequence = [step]
    ae = AE(ae_title="CHURNSCU")
    ae.add_requested_context(MWL_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    if not assoc.is_established:
        raise RuntimeError("no association")
    answers: list[tuple[str, str, str]] = []
    final = None
    try:
        for status, answer in assoc.send_c_find(identifier, MWL_FIND):
            if status is None:
                raise RuntimeError("no response (timeout or abort)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and answer is not None:
                items = answer.get("ScheduledProcedureStepSequence") or [Dataset()]
                answers.append(
                    (
                        str(answer.get("PatientID", "")),
                        str(answer.get("RequestedProcedureID", "")),
                        str(items[0].get("ScheduledProcedureStepDescription", "")),
                    )
                )
            else:
                final = code
    finally:
        assoc.release()
    if final != 0:
        raise RuntimeError(f"final status {final}")
    return answers


@dataclass
class ChurnReport:
    """What a churn run did and found."""

    operations: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    queries: int = 0
    answers_checked: int = 0
    failures: list[str] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    settle_s: float = 0.0
    seconds: float = 0.0
    log_lines: int = 0

    def lines(self) -> list[str]:
        """The report for a person."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        return [
            f"operations: {self.operations} ({kinds})",
            f"queries: {self.queries}; answers checked: {self.answers_checked}",
            f"settled (a query answers exactly the files present) after {self.settle_s:.2f} s",
            f"server RSS: {self.rss_before_mb:.1f} MB before, {self.rss_after_mb:.1f} MB after",
            f"server log: {self.log_lines} lines; run took {self.seconds:.1f} s",
            f"failures: {len(self.failures)}",
            *(f"FAILURE {f}" for f in self.failures[:20]),
        ]


def _check_answer(
    answer: tuple[str, str, str], written: dict[str, set[int]], failures: list[str]
) -> None:
    key, procedure, description = answer
    if not (procedure.startswith("V") and description.startswith("VERSION ")):
        failures.append(f"answer {answer}: not a version this tool writes")
        return
    if procedure[1:] != description[len("VERSION ") :]:
        failures.append(f"torn answer {answer}: the two version attributes differ")
        return
    if int(procedure[1:]) not in written.get(key, set()):
        failures.append(f"answer {answer}: a version never written for {key}")


def run_churn(
    operations: int = 10_000,
    clients: int = 8,
    files: int = 40,
    seed: int = 1,
    rescan_interval: float = 2.0,
    pace_s: float = 0.001,
    settle_timeout: float = 20.0,
) -> ChurnReport:
    """Run the churn; returns the report (failures listed there, never raised)."""
    report = ChurnReport()
    started = time.monotonic()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="wlm-churn-") as tmp:
        folder = Folder(Path(tmp) / "db" / AET, rng)
        folder.path.mkdir(parents=True)
        for _ in range(files):
            folder.create()
        port = free_port()
        log_path = Path(tmp) / "server.log"
        command = [sys.executable, "-m", "wlmserver", "-dfp", str(folder.path.parent)]
        command += ["--bind", "127.0.0.1", "--rescan-interval", str(rescan_interval), str(port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            _wait_ready(server, port, report)
            for _ in range(3):  # warm up: the first queries allocate caches
                query(port)
            report.rss_before_mb = rss_mb(server.pid)
            _churn(port, folder, operations, files, clients, pace_s, report)
            report.settle_s = _settle(port, folder, settle_timeout, report)
            for _ in range(3):
                query(port)
            report.rss_after_mb = rss_mb(server.pid)
        except RuntimeError as exc:
            report.failures.append(str(exc))
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        text = log_path.read_text(errors="replace")
        report.log_lines = len(text.splitlines())
        for line in text.splitlines():
            if any(p in line for p in LOG_PROBLEMS):
                report.failures.append(f"server log: {line[:300]}")
    report.seconds = time.monotonic() - started
    return report


def _wait_ready(server: subprocess.Popen[bytes], port: int, report: ChurnReport) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            query(port, timeout=5)
            return
        except (RuntimeError, OSError):
            time.sleep(0.1)
    raise RuntimeError("the server was not ready within 60 s")


def _churn(
    port: int,
    folder: Folder,
    operations: int,
    files: int,
    clients: int,
    pace_s: float,
    report: ChurnReport,
) -> None:
    done = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[str, str, str]] = []
    failures: list[str] = []

    def client() -> None:
        while not done.is_set():
            try:
                got = query(port)
            except Exception as exc:  # a failed query is a finding, not a crash
                with lock:
                    failures.append(f"query failed: {type(exc).__name__}: {exc}")
                time.sleep(0.05)
                continue
            with lock:
                report.queries += 1
                answers.extend(got)

    threads = [threading.Thread(target=client, name=f"churn-client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(operations):
            folder.operate(files)
            report.operations += 1
            if pace_s:
                time.sleep(pace_s)
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        failures.append(f"clients still querying 60 s after the end: {alive}")
    report.kinds = dict(folder.counts)
    for answer in answers:
        _check_answer(answer, folder.written, failures)
    report.answers_checked += len(answers)
    report.failures.extend(failures)


def _settle(port: int, folder: Folder, timeout: float, report: ChurnReport) -> float:
    """Query until the answers are exactly the files on disk; how long that took."""
    started = time.monotonic()
    expected = folder.expected()
    got: set[tuple[str, int]] = set()
    while time.monotonic() - started < timeout:
        answers = query(port)
        report.queries += 1
        report.answers_checked += len(answers)
        got = {(k, int(p[1:])) for k, p, _ in answers if p[1:].isdigit()}
        if got == expected and len(answers) == len(expected):
            return time.monotonic() - started
        time.sleep(0.2)
    missing, extra = sorted(expected - got)[:5], sorted(got - expected)[:5]
    report.failures.append(
        f"after {timeout:.0f} s the answers are not the files present: "
        f"{len(expected - got)} missing (e.g. {missing}), {len(got - expected)} extra "
        f"(e.g. {extra})"
    )
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--operations", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--files", type=int, default=40, help="files in the folder, about")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rescan-interval", type=float, default=2.0)
    args = p.parse_args(argv)
    report = run_churn(args.operations, args.clients, args.files, args.seed, args.rescan_interval)
    for line in report.lines():
        print(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
