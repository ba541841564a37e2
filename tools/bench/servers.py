"""The server processes: start one and wait until it is ready, stop it, and read its memory
and CPU time from /proc."""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from . import BenchmarkError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (from /proc), or None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process, its threads and its children (from /proc).

    Parameters
    ----------
    pid : int
        The process.

    Returns
    -------
    float or None
        User + system time of the process (all threads), of its children it has reaped and
        of the children still there (wlmscpfs forks one per association and reaps it later);
        None where /proc is not available.
    """

    def times(task: str, reaped: bool) -> float:
        fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14 to 17
        return sum(int(v) for v in fields[11 : 15 if reaped else 13])

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    try:
        ticks = times(str(pid), True)
    except OSError:
        return None
    for child in children:
        with suppress(OSError):
            ticks += times(child, True)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: float | None, after: float | None) -> float | None:
    """``after - before`` when both are known."""
    return None if before is None or after is None else after - before


@dataclass
class Running:
    """A server process started by :func:`server_process`.

    Attributes
    ----------
    name : str
        ``wlmserver``, ``wlmscpfs`` or ``floor``.
    process : subprocess.Popen[bytes]
        The process.
    port : int
        Where it listens.
    startup_s : float
        Process start to ready (ready line printed, or port accepting connections).
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    startup_s: float


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_ready_line(
    process: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float
) -> str:
    """Read the process's stdout until a line matches ``pattern``; bounded by ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BenchmarkError(f"exited with status {process.wait()} before it was ready")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if pattern.search(text):
                    return text
    raise BenchmarkError(f"not ready within {timeout:.0f} s")


def _wait_for_port(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Wait until ``port`` accepts connections; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"exited with status {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchmarkError(f"port {port} not open within {timeout:.0f} s")


@contextmanager
def server_process(
    name: str,
    args: list[str],
    port: int,
    log: Path,
    timeout: float,
    ready: re.Pattern[str] | None = None,
) -> Iterator[Running]:
    """Run a server process for the duration of a ``with`` block.

    Parameters
    ----------
    name : str
        For messages.
    args : list[str]
        The command.
    port : int
        The port it listens on.
    log : Path
        Its stderr goes here.
    timeout : float
        Seconds to wait for it to be ready.
    ready : re.Pattern[str] or None
        A line on stdout that says it is ready; None: wait for the port instead.

    Yields
    ------
    Running
        The process, ready.

    Raises
    ------
    BenchmarkError
        It exited or was not ready in time (the message holds the end of its log).
    """
    with open(log, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            stderr=err,
        )
        try:
            try:
                if ready is not None:
                    _read_ready_line(process, ready, timeout)
                _wait_for_port(process, port, timeout)
            except BenchmarkError as exc:
                raise BenchmarkError(f"{name} {exc}; its log:\n{_tail(log)}") from None
            yield Running(name, process, port, time.perf_counter() - started)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
            if process.stdout is not None:
                process.stdout.close()
