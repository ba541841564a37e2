"""Reading many files at once in worker processes: the first index of a large folder.

Parsing is pure Python and holds the GIL, so threads cannot read files faster; processes
can. When a scan finds many files to read (the first index, or a restart after much changed),
:class:`WorkerReads` hands them out in batches to worker processes, each of which reads its
batch exactly as the index would (:func:`~wlmserver.store.reader.read_state`, under the
folder's ``lockfile`` when there is one) and sends back the file states as plain data
(:mod:`wlmserver.store.packing`) with the lines to log. The index takes them in the order it
handed them out, so logs and results are what a serial read gives.

Workers are fresh interpreters (``python -c``, given this process's ``sys.path``; not
:mod:`multiprocessing`, which imports the main module again in each child: a script starting
the server without a ``__main__`` guard would start servers), speak plain data over their pipes,
ignore the Ctrl-C a terminal sends to the whole process group (the server decides when to
stop), and end when their input does, once the scan is done. If they cannot be started or one
dies, the files not read yet are read in the index's own process.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from wlmserver.store.files import FileState, Signature
from wlmserver.store.formats import FORMATS, Formats
from wlmserver.store.listing import Listing
from wlmserver.store.packing import pack_states, unpack_states
from wlmserver.store.reader import LockBusy, Note, ReadOptions, folder_lock, read_state

LOGGER = logging.getLogger(__name__)

#: Files per batch: what a worker reads under one hold of the folder's lockfile.
BATCH = 256
#: Fewer files to read than this are read in the index's own process: starting workers
#: (importing the parser, about half a second each) would cost more than it saves.
PARALLEL_ABOVE = 4000
#: Batches asked of a worker at once: one it reads, one waiting (a request is about 15 KB, so
#: a pipe never fills up with requests while the worker writes an answer).
_AHEAD = 2


def worker_count() -> int:
    """How many worker processes pay: one per CPU this process may run on, at most 8; none
    on one CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus, 8)


def _ignore_stop_signals() -> None:
    """Worker start: leave stopping to the server (Ctrl-C reaches the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def read_batch(
    folder: str,
    rows: Sequence[tuple[str, Signature | None, bool]],
    options: ReadOptions,
    lock_timeout: float,
) -> bytes:
    """Read a batch of files of one folder (in a worker process).

    Parameters
    ----------
    folder : str
        The AE folder.
    rows : sequence of (name, signature, is_link)
        The files, their signatures from the scan's listing (None: not stat'ed yet, stat'ed
        here just before it is read), and whether each is a link.
    options : ReadOptions
        How files are read.
    lock_timeout : float
        How long to wait for the folder's lockfile.

    Returns
    -------
    bytes
        Marshalled ``(busy, packed states, notes)``: ``busy`` when a writer held the lockfile
        too long (nothing was read); else each file's state (:func:`pack_states`) and, per
        file, the lines to log.
    """
    folder_path = Path(folder)
    states: list[tuple[str, FileState]] = []
    notes: list[list[Note]] = []
    try:
        with folder_lock(folder_path, lock_timeout) as locked:
            for name, signature, is_link in rows:
                path = folder_path / name
                # a writer may have finished it meanwhile (or it was listed unstat'ed): as it
                # is now
                if locked or signature is None:
                    now = Listing.signature_now(path)
                    if now is None:
                        continue  # gone: its event removes it
                    signature = now
                state, said = read_state(path, tuple(signature), options, is_link)  # type: ignore[arg-type]
                states.append((name, state))
                notes.append(said)
    except LockBusy:
        return marshal.dumps((True, b"", ()))
    return marshal.dumps((False, pack_states(states), tuple(map(tuple, notes))))


class WorkersFailed(Exception):
    """The worker processes could not be started, or one died: read the rest here."""


# The worker: reads the sys.path it is to use, then serves requests (see serve).
_WORKER = (
    "import marshal, sys; sys.path[:] = marshal.load(sys.stdin.buffer); "
    "from wlmserver.store.workers import serve; serve()"
)
_LENGTH = struct.Struct("<Q")


def _send(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        return None
    return data


def serve() -> None:
    """A worker process's main loop: after the read options, one batch per request
    (:func:`read_batch`), answered in order, until its input ends."""
    _ignore_stop_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    first = _receive(stdin)
    if first is None:
        return
    format_names, reject_incomplete, max_size, follow_links, real_root, lock_timeout = (
        marshal.loads(first)
    )
    formats = Formats(tuple(f for f in FORMATS if f.name in format_names))
    options = ReadOptions(formats, reject_incomplete, max_size, follow_links, real_root)
    while (request := _receive(stdin)) is not None:
        folder, rows = marshal.loads(request)
        _send(stdout, read_batch(folder, rows, options, lock_timeout))


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, options: ReadOptions, lock_timeout: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.stdin.write(marshal.dumps(list(sys.path)))
        formats = tuple(f.name for f in options.formats.served)
        _send(
            self.stdin,
            marshal.dumps(
                (
                    formats,
                    options.reject_incomplete,
                    options.max_size,
                    options.follow_links,
                    options.real_root,
                    lock_timeout,
                )
            ),
        )

    def ask(self, folder: str, rows: Sequence[tuple[str, Signature | None, bool]]) -> None:
        _send(self.stdin, marshal.dumps((folder, tuple(rows))))

    def answer(self) -> bytes:
        data = _receive(self.stdout)
        if data is None:
            raise WorkersFailed(f"a worker process ended (exit status {self.process.poll()})")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.stdout.close()


class WorkerReads:
    """Worker processes reading the files of one scan, batch by batch, in order.

    Parameters
    ----------
    workers : int
        How many processes.
    options : ReadOptions
        How files are read.
    lock_timeout : float
        How long a worker waits for a folder's lockfile.
    """

    def __init__(self, workers: int, options: ReadOptions, lock_timeout: float) -> None:
        self.workers = workers
        self._options = options
        self._lock_timeout = lock_timeout
        self._processes: list[_Worker] = []

    def __enter__(self) -> WorkerReads:
        try:
            for _ in range(self.workers):
                self._processes.append(_Worker(self._options, self._lock_timeout))
        except (OSError, ValueError) as exc:
            self.__exit__()
            raise WorkersFailed(str(exc)) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._processes:
            worker.close()
        self._processes.clear()

    def read(
        self, folder: Path, rows: Sequence[tuple[str, Signature | None, bool]]
    ) -> Iterator[tuple[int, list[tuple[str, FileState, list[Note]]]]]:
        """Read files in batches; yields ``(how many rows were dealt with so far, the states
        read in that batch with what to log)`` in the order of ``rows``.

        Batch ``i`` goes to worker ``i mod n``, and each worker has at most :data:`_AHEAD`
        batches asked: the answers are taken in order, and no pipe fills up both ways.

        Raises
        ------
        LockBusy
            A writer held the folder's lockfile too long (the batches after are not read).
        WorkersFailed
            A worker died, or answered what cannot be read back.
        """
        batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
        workers = self._processes
        asked = 0
        try:
            for done in range(len(batches)):
                while asked < len(batches) and asked < done + len(workers) * _AHEAD:
                    workers[asked % len(workers)].ask(str(folder), batches[asked])
                    asked += 1
                busy, packed, notes = marshal.loads(workers[done % len(workers)].answer())
                if busy:
                    raise LockBusy(str(folder))
                states = unpack_states(packed)
                if len(states) != len(notes):
                    raise WorkersFailed("a worker's answer does not add up")
                yield (
                    min((done + 1) * BATCH, len(rows)),
                    [(n, s, list(said)) for (n, s), said in zip(states, notes, strict=True)],
                )
        except (LockBusy, WorkersFailed):
            raise
        except Exception as exc:  # a broken pipe, a damaged answer: read the rest here
            raise WorkersFailed(f"{type(exc).__name__}: {exc}") from exc
