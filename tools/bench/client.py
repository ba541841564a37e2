"""The pynetdicom worklist client: one C-FIND on a new association, answers counted, with
an optional C-CANCEL after some answers or after a deadline."""

from __future__ import annotations

import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from leanfind import MWL_FIND, PENDING
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from . import BenchmarkError
from .store import AE_FOLDER


def nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm, as DCMTK clients (and wlmserver) do."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class FindOutcome:
    """What one C-FIND brought back.

    Attributes
    ----------
    answers : int
        Pending responses received.
    status : int or None
        The final status; None if none came (timeout or abort).
    seconds : float
        From requesting the association to its release.
    identifiers : list[Dataset]
        The answers, when asked to keep them.
    cancel_seconds : float or None
        From sending C-CANCEL to the final status, if a C-CANCEL was sent.
    answers_after_cancel : int
        Pending responses received after the C-CANCEL.
    timed_out : bool
        The query was cancelled because its deadline passed, or no final status came.
    """

    answers: int = 0
    status: int | None = None
    seconds: float = 0.0
    identifiers: list[Dataset] = field(default_factory=list)
    cancel_seconds: float | None = None
    answers_after_cancel: int = 0
    timed_out: bool = False


class Client:
    """A pynetdicom worklist client; each query runs on a new association.

    Parameters
    ----------
    timeout : float
        ACSE, DIMSE and network timeout in seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.ae: Any = AE(ae_title="WLMBENCH")
        self.ae.add_requested_context(MWL_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self.ae.connection_timeout = min(timeout, 10.0)

    def find(
        self,
        port: int,
        query: Dataset,
        *,
        keep: bool = False,
        cancel_after: int | None = None,
        deadline: float | None = None,
    ) -> FindOutcome:
        """Send one C-FIND over a new association and receive every response.

        Parameters
        ----------
        port : int
            The server's port on 127.0.0.1.
        query : Dataset
            The identifier.
        keep : bool
            Keep the answers' identifiers.
        cancel_after : int or None
            Send C-CANCEL after this many answers.
        deadline : float or None
            A ``time.monotonic()`` value; after it, send C-CANCEL after the next answer.

        Returns
        -------
        FindOutcome
            Counts, final status and times.

        Raises
        ------
        BenchmarkError
            The association was not established.
        """
        outcome = FindOutcome()
        started = time.perf_counter()
        assoc = self.ae.associate(
            "127.0.0.1", port, ae_title=AE_FOLDER, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
        )
        if not assoc.is_established:
            how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            seconds = time.perf_counter() - started
            raise BenchmarkError(f"association with port {port} {how} after {seconds:.1f} s")
        cancel_sent: float | None = None
        try:
            for status, identifier in assoc.send_c_find(query, MWL_FIND):
                if "Status" not in status:  # no response within the timeout, or an abort
                    outcome.timed_out = True
                    break
                code = int(status.Status)
                if code not in PENDING:
                    outcome.status = code
                    if cancel_sent is not None:
                        outcome.cancel_seconds = time.perf_counter() - cancel_sent
                    break
                outcome.answers += 1
                if cancel_sent is not None:
                    outcome.answers_after_cancel += 1
                    continue
                if keep and identifier is not None:
                    outcome.identifiers.append(identifier)
                late = deadline is not None and time.monotonic() > deadline
                if late or (cancel_after is not None and outcome.answers >= cancel_after):
                    outcome.timed_out = late
                    assoc.send_c_cancel(1, query_model=MWL_FIND)
                    cancel_sent = time.perf_counter()
        finally:
            if assoc.is_established:
                assoc.release()
        outcome.seconds = time.perf_counter() - started
        return outcome
