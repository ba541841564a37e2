"""Forward the MPPS messages the server accepted to another MPPS SCP (the RIS), as an SCU.

``--mpps-forward AET@HOST:PORT``: each N-CREATE and N-SET the server accepted is queued on
disk (:mod:`wlmserver.store.forward`) by the handler, which answers the modality at once,
whatever the RIS does. One thread, :class:`Forwarder`, sends the queue in order:

- one association carries the messages while they flow, and is released once the queue has
  been empty for ``idle_release`` seconds;
- a message file is deleted only after the RIS acknowledged it: Success, or a warning status
  (PS3.7 C: 0x0001, 0x0107, 0x0116); a crash or restart before that sends it again;
- while the RIS cannot be reached, or answers a failure that may pass (PS3.7 C: 0x0110
  Processing failure, 0x0213 Resource limitation, 0xA7xx Out of resources, a refusal of the
  SOP Class or of our AE title, which a configuration change on the RIS ends), the same
  message is retried with exponential backoff (:class:`Backoff`, 1 s doubling to 60 s): the
  queue never goes out of order;
- the duplicates a restart may cause are delivered messages: an N-CREATE the RIS answers
  with 0x0111 (Duplicate SOP Instance, PS3.4 F.7.2.1.4), and a final N-SET answered 0x0110
  with Error ID A710H ("may no longer be updated", PS3.4 Table F.7.2-2: the RIS has the
  instance COMPLETED or DISCONTINUED already) are logged as such and deleted. Another N-SET
  sent again is idempotent for the RIS (the same values set again);
- a message the RIS refuses for good (any other failure: 0x0106 Invalid attribute value,
  0x0120 Missing attribute, ...) is moved to ``forward/failed/`` with one ERROR line naming
  it and the status, and the queue goes on; the N-SETs of an instance whose N-CREATE was
  refused follow it to ``failed/`` (the RIS cannot have the instance they change).

The log says when the RIS becomes unreachable (once, not per retry), when it is back, and
how many messages are queued; :meth:`Forwarder.state` (and ``wlmserver check``) too.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from wlmserver.config.forward import ForwardTarget
from wlmserver.matching.mpps import (
    MPPS_SOP_CLASS,
    NO_LONGER_UPDATABLE_ERROR_ID,
    MppsStatus,
)
from wlmserver.store.forward import (
    DamagedMessage,
    ForwardQueue,
    Kind,
    Message,
    QueueState,
    format_age,
)

LOGGER = logging.getLogger(__name__)

#: PS3.7 Annex C warning statuses of N-CREATE and N-SET: the request was performed.
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})
#: Failures that may pass (PS3.7 C): Processing failure (0x0110), Duplicate invocation
#: (0x0210), Unrecognized operation (0x0211), Resource limitation (0x0213), No such SOP Class
#: (0x0118), SOP Class not supported (0x0122), Not authorized (0x0124); and 0xA700-0xA7FF,
#: Out of resources. The last four are the RIS's configuration: fixed there, the queue flows.
TRANSIENT_STATUSES = frozenset({0x0110, 0x0118, 0x0122, 0x0124, 0x0210, 0x0211, 0x0213})


class Verdict(Enum):
    """What a response means for the queued message."""

    DELIVERED = "delivered"
    """Success or a warning: the RIS holds it; delete the file."""
    ALREADY_DELIVERED = "already delivered"
    """A duplicate of a message the RIS acknowledged before a restart; delete the file."""
    REFUSED = "refused"
    """Refused for good: move the file to ``failed/``."""
    RETRY = "retry"
    """Unreachable, or a failure that may pass: send it again later."""


def classify(kind: Kind, status: int, error_id: int | None = None) -> Verdict:
    """What the RIS's status (PS3.7 Annex C, PS3.4 F.7.2.1.4 and F.7.2.2.4) means for the
    message.

    Examples
    --------
    >>> [classify(Kind.N_CREATE, s).value for s in (0x0000, 0x0107, 0x0111, 0x0120, 0xA700)]
    ['delivered', 'delivered', 'already delivered', 'refused', 'retry']
    >>> classify(Kind.N_SET, 0x0110, 0xA710).value, classify(Kind.N_SET, 0x0110).value
    ('already delivered', 'retry')
    >>> classify(Kind.N_SET, 0x0111).value  # an N-SET has no duplicate: a real failure
    'refused'
    """
    if status == MppsStatus.SUCCESS or status in WARNING_STATUSES:
        return Verdict.DELIVERED
    if kind is Kind.N_CREATE and status == MppsStatus.DUPLICATE_SOP_INSTANCE:
        return Verdict.ALREADY_DELIVERED
    if (
        kind is Kind.N_SET
        and status == MppsStatus.PROCESSING_FAILURE
        and error_id == NO_LONGER_UPDATABLE_ERROR_ID
    ):
        return Verdict.ALREADY_DELIVERED
    if status in TRANSIENT_STATUSES or 0xA700 <= status <= 0xA7FF:
        return Verdict.RETRY
    return Verdict.REFUSED


@dataclass(frozen=True)
class Backoff:
    """How long to wait between two attempts at the same message: ``first`` seconds,
    doubling up to ``most``.

    Examples
    --------
    >>> b = Backoff(1.0, 60.0)
    >>> [b.after(n) for n in (1, 2, 3, 7, 30)]
    [1.0, 2.0, 4.0, 60.0, 60.0]
    """

    first: float = 1.0
    most: float = 60.0

    def after(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts in a row."""
        return float(min(self.most, self.first * 2.0 ** min(max(failures - 1, 0), 30)))


@dataclass(frozen=True)
class Attempt:
    """One attempt at sending a message: its verdict and what the RIS said."""

    verdict: Verdict
    reason: str
    status: int | None = None


def connect_problem(host: str, port: int, timeout: float) -> str:
    """Why no TCP connection to ``host:port`` can be made, or ``""`` when one can."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except ConnectionRefusedError:
        return f"connection to {host}:{port} refused"
    except socket.gaierror as exc:
        return f"cannot find the host {host!r} ({exc.strerror or exc})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


class Forwarder:
    """The thread that sends the forwarding queue to the RIS.

    Parameters
    ----------
    queue : ForwardQueue
        The queue (opened: :meth:`ForwardQueue.open`).
    target : ForwardTarget
        The RIS's MPPS SCP.
    calling_ae_title : str
        Our AE title towards it.
    backoff : Backoff
        Waits between attempts while it cannot be reached.
    idle_release : float
        Seconds the queue stays empty before the association is released.
    timeout : float
        ACSE, DIMSE and network timeout of the association, in seconds.

    Notes
    -----
    :meth:`enqueue` from any thread (the N-CREATE and N-SET handlers); :meth:`start` and
    :meth:`stop` from the server's.
    """

    def __init__(
        self,
        queue: ForwardQueue,
        target: ForwardTarget,
        calling_ae_title: str,
        *,
        backoff: Backoff | None = None,
        idle_release: float = 2.0,
        timeout: float = 30.0,
    ) -> None:
        self.queue = queue
        self.target = target
        self.calling_ae_title = calling_ae_title
        self.backoff = backoff or Backoff()
        self.idle_release = idle_release
        self.timeout = timeout
        #: Messages acknowledged, duplicates taken as delivered, messages moved to failed/.
        self.delivered = 0
        self.already_delivered = 0
        self.refused = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assoc: Any = None
        self._ae: Any = None
        self._down_since: float | None = None
        self._failures = 0
        self._connected = False  # whether an association was ever made

    # -- the server's side

    def start(self) -> None:
        """Log the queue's state and start sending."""
        LOGGER.info(
            "MPPS forwarding to %s as %s: %s",
            self.target,
            self.calling_ae_title,
            self.queue.state().describe(),
        )
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="wlmserver-mpps-forwarder", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending: the message in flight is given ``timeout`` seconds for its answer,
        then the association is aborted; what is not acknowledged stays queued."""
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            assoc = self._assoc
            if assoc is not None:
                assoc.abort()
            thread.join(timeout)
        if thread.is_alive():
            LOGGER.warning("MPPS forwarding: the sender did not stop within %g s", 2 * timeout)
            return
        LOGGER.info("MPPS forwarding stopped: %s", self.queue.state().describe())

    def enqueue(self, kind: Kind, uid: str, dataset: Dataset | None) -> bool:
        """Queue an accepted request for the RIS (durably, before this returns); whether it
        was queued. Never raises: the modality's request is answered whatever happens here,
        and a message that cannot be queued is logged as an ERROR naming it."""
        try:
            self.queue.append(kind, uid, dataset if dataset is not None else Dataset())
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            LOGGER.error(
                "MPPS forwarding: %s %s NOT queued for %s: %s",
                kind.label,
                uid,
                self.target,
                reason or type(exc).__name__,
            )
            return False
        self._wake.set()
        return True

    def wake(self) -> None:
        """Look at the queue now: a message was queued with its instance
        (:class:`~wlmserver.store.mpps.MppsStore` with a queue, which the handlers use)."""
        self._wake.set()

    def state(self) -> QueueState:
        """What the queue holds now."""
        return self.queue.state()

    # -- the thread

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                message = self._next()
                if message is None:
                    self._idle()
                    continue
                self._handle(message)
        except Exception:  # a bug must not end forwarding silently
            LOGGER.exception("MPPS forwarding stopped by an unexpected error")
        finally:
            self._release()

    def _idle(self) -> None:
        """Wait for a message; release the association once idle for ``idle_release``."""
        if self._assoc is not None:
            woken = self._wake.wait(self.idle_release)
            if not woken:
                self._release()
        else:
            self._wake.wait()
        self._wake.clear()

    def _next(self) -> Message | None:
        """The first pending message, after moving to ``failed/`` the N-SETs whose N-CREATE
        was refused."""
        failed = self.queue.failed_creates()
        for message in self.queue.pending():
            if message.kind is Kind.N_SET and message.uid in failed:
                self._fail(message, "its N-CREATE was refused (in failed/)")
                continue
            return message
        return None

    def _handle(self, message: Message) -> None:
        attempt = self._attempt(message)
        if attempt.verdict is Verdict.RETRY:
            self._failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                LOGGER.warning(
                    "MPPS forwarding: %s unavailable (%s); %d queued; retrying every %g to %g s",
                    self.target,
                    attempt.reason,
                    len(self.queue.pending()),
                    self.backoff.first,
                    self.backoff.most,
                )
            self._release(abort=True)
            self._stopping.wait(self.backoff.after(self._failures))
            return
        if self._down_since is not None:
            LOGGER.info(
                "MPPS forwarding: %s available again after %s; %d queued",
                self.target,
                format_age(time.monotonic() - self._down_since),
                len(self.queue.pending()),
            )
            self._down_since = None
        self._failures = 0
        if attempt.verdict is Verdict.REFUSED:
            self._fail(message, attempt.reason)
            return
        if attempt.verdict is Verdict.ALREADY_DELIVERED:
            self.already_delivered += 1
        else:
            self.delivered += 1
        try:
            self.queue.delete(message)
        except OSError as exc:  # it would be sent again: a duplicate the RIS tells apart
            LOGGER.error(
                "MPPS forwarding: %s acknowledged but its file cannot be removed (%s)",
                message.name,
                exc.strerror or exc,
            )
            self._stopping.wait(self.backoff.most)
        if attempt.verdict is Verdict.ALREADY_DELIVERED:
            LOGGER.info(
                "MPPS forwarding: %s already held by %s (%s): sent again after a restart, "
                "taken as delivered",
                message.name,
                self.target,
                attempt.reason,
            )
            return
        log = LOGGER.warning if attempt.status in WARNING_STATUSES else LOGGER.info
        log("MPPS forwarded %s to %s: %s", message.name, self.target, attempt.reason)

    def _fail(self, message: Message, reason: str) -> None:
        try:
            where = self.queue.fail(message)
        except OSError as exc:
            # cannot move it: stop here rather than lose it or send what follows out of order
            LOGGER.error(
                "MPPS forwarding: %s refused by %s (%s) and cannot be moved to failed/ (%s); "
                "retrying",
                message.name,
                self.target,
                reason,
                exc.strerror or exc,
            )
            self._stopping.wait(self.backoff.most)
            return
        self.refused += 1
        LOGGER.error(
            "MPPS forwarding: %s not forwarded to %s: %s; moved to %s",
            message.name,
            self.target,
            reason,
            where,
        )

    def _attempt(self, message: Message) -> Attempt:
        try:
            dataset = self.queue.read(message)
        except FileNotFoundError:
            return Attempt(Verdict.DELIVERED, "its file was removed meanwhile")
        except DamagedMessage as exc:
            return Attempt(Verdict.REFUSED, f"damaged queue file: {exc}")
        except OSError as exc:
            return Attempt(Verdict.RETRY, f"cannot read {message.path}: {exc.strerror or exc}")
        assoc, problem = self._association()
        if assoc is None:
            return Attempt(Verdict.RETRY, problem)
        try:
            if message.kind is Kind.N_CREATE:
                status, _ = assoc.send_n_create(dataset, MPPS_SOP_CLASS, message.uid)
            else:
                status, _ = assoc.send_n_set(dataset, MPPS_SOP_CLASS, message.uid)
        except ValueError as exc:  # pynetdicom cannot encode it: it never can
            return Attempt(Verdict.REFUSED, f"cannot be encoded ({exc})")
        except Exception as exc:
            return Attempt(Verdict.RETRY, f"sending failed ({exc})")
        if status is None or "Status" not in status:
            return Attempt(Verdict.RETRY, "no response (timeout or association aborted)")
        code = int(status.Status)
        error_id = status.get("ErrorID")
        comment = str(status.get("ErrorComment", "") or "").strip()
        said = f"status 0x{code:04X}" + (f" ({comment})" if comment else "")
        if error_id is not None:
            said += f", Error ID {int(error_id):04X}H"
        verdict = classify(message.kind, code, None if error_id is None else int(error_id))
        return Attempt(verdict, said, code)

    def _association(self) -> tuple[Any, str]:
        """The open association, or a new one; ``(None, why)`` when there is none."""
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc, ""
        self._assoc = None
        from pynetdicom import AE, evt

        if self._ae is None:
            ae = AE(ae_title=self.calling_ae_title)
            ae.add_requested_context(
                MPPS_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
            ae.connection_timeout = min(self.timeout, 10.0)
            self._ae = ae
        opened: list[bool] = []

        def on_open(event: Any) -> None:
            opened.append(True)
            sock = getattr(event.assoc.dul.socket, "socket", None)
            if sock is not None:  # no Nagle stalls between the messages (design.md)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        t = self.target
        if self._down_since is not None or not self._connected:
            # while it is down, try a bare connection first: pynetdicom logs every failed
            # association request as an ERROR, and the log says it is down once
            problem = connect_problem(t.host, t.port, min(self.timeout, 10.0))
            if problem:
                return None, problem
        try:
            assoc = self._ae.associate(
                t.host, t.port, ae_title=t.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)]
            )
        except OSError as exc:  # the host name does not resolve
            return None, f"cannot find the host {t.host!r} ({exc.strerror or exc})"
        if assoc.is_established:
            self._assoc = assoc
            self._connected = True
            return assoc, ""
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            result, source, diagnostic = (
                int(getattr(rsp, n, 0) or 0) for n in ("result", "result_source", "diagnostic")
            )
            return None, (
                f"association rejected: result {result}, source {source}, reason {diagnostic}"
                " (called AE title, calling AE title or allow-list?)"
            )
        if not opened:
            return None, f"cannot connect to {t.host}:{t.port}"
        return None, "association aborted or not answered (is it an MPPS SCP?)"

    def _release(self, abort: bool = False) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        with contextlib.suppress(Exception):
            if abort or not assoc.is_established:
                assoc.abort()
            else:
                assoc.release()
