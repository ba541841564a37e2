"""Forward the MPPS messages the server accepted to another MPPS SCP (the RIS), as an SCU.

``--mpps-forward AET@HOST:PORT``: each N-CREATE and N-SET the server accepted is queued on
disk (:mod:`wlmserver.store.forward`) by the handler, which answers the modality at once,
whatever the RIS does. One thread, :class:`Forwarder`, sends the queue, oldest first, and no
message blocks the others:

- **in order per MPPS instance**: a message is sent only once every earlier message of its
  SOP Instance has left the queue, so an N-SET never overtakes its N-CREATE nor an earlier
  N-SET; messages of other instances are not held up by one that waits;
- one association carries the messages while they flow, and is released once nothing has
  been sent for ``idle_release`` seconds;
- a message file is deleted only after the RIS acknowledged it: Success, or a warning status
  (PS3.7 C: 0x0001, 0x0107, 0x0116); a crash or restart before that sends it again;
- **the RIS cannot be reached** (no connection, the association rejected or not answered):
  nothing is any message's fault; everything waits, and the oldest message is tried again
  with exponential backoff (:class:`Backoff`, 1 s doubling to 60 s), no try counted;
- **the RIS refuses one message for now** (a failure that may pass, PS3.7 C: 0x0110
  Processing failure, 0x0213 Resource limitation, 0xA7xx Out of resources, a refusal of the
  SOP Class or of our AE title ...) **or does not answer it** (no response within the
  timeout, or the association ends after it was sent): that message is tried again with its
  own backoff, its failed tries kept on disk (:class:`~wlmserver.store.forward.Tries`, so a
  restart goes on with them), and the later messages of its instance wait for it while the
  rest flow. Every status is taken as being about the message: a RIS that refuses one message
  over and over (one too large for it, one it cannot process) must not stop the others;
- **set aside**: a message still refused after :class:`GiveUp` (10 tries over at least an
  hour) is moved to ``forward/failed/`` with one ERROR line, *provided the RIS settled other
  messages meanwhile* (accepted them, or refused them for good): a RIS that refuses every
  message is broken as a whole, like one that is down, and nothing is set aside; then tries
  are paced, one at a time and up to 60 s apart, until it settles one;
- **a slow RIS**: the timeout (``--mpps-forward-timeout``, 60 s) is how long an answer is
  waited for. A message not answered in time may have been applied by the RIS; the
  association is aborted (nothing else is sent on it), and the message is sent again on a new
  one no sooner than the time already waited (the RIS may still be working on it), while
  answers are from then on waited for twice as long (up to 4 times the timeout), so a RIS
  that is slow rather than dead is sent one duplicate, not a stream of them;
- the duplicates a timeout or a restart may cause are delivered messages: an N-CREATE the RIS
  answers with 0x0111 (Duplicate SOP Instance, PS3.4 F.7.2.1.4), and a final N-SET answered
  0x0110 with Error ID A710H ("may no longer be updated", PS3.4 Table F.7.2-2: the RIS has
  the instance COMPLETED or DISCONTINUED already) are logged as such and deleted. Another
  N-SET sent again is idempotent for the RIS (the same values set again);
- a message the RIS refuses for good (any other failure: 0x0106 Invalid attribute value,
  0x0120 Missing attribute, ...) is moved to ``forward/failed/`` at once, with one ERROR line
  naming it and the status;
- the N-SETs of an instance whose N-CREATE is in ``failed/`` (refused or set aside) follow it
  there without being sent: the RIS cannot have the instance they change, and kept together
  they are resent together, in order, when an administrator moves them back. An N-SET set
  aside does not hold back the later N-SETs of its instance: the final one carries the
  step's final state.

The sender does not read the folder per message: what :meth:`ForwardQueue.append` queues is
handed to it, and the folder is listed again every ``rescan`` seconds (files moved back from
``failed/`` by hand). The log says when the RIS becomes unreachable (once, not per retry), when
it is back, when a message is first refused and when it is delivered after tries;
:meth:`Forwarder.state` (and ``wlmserver check``) says how many are queued, being retried and
failed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from wlmserver.config.forward import DEFAULT_TIMEOUT, ForwardTarget
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
    Tries,
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
    """A failure that may pass, or no answer: this message again later (its instance's later
    messages waiting), the others meanwhile."""
    UNAVAILABLE = "unavailable"
    """No association: the RIS is down or refuses us; everything waits."""
    GONE = "gone"
    """Its file was removed meanwhile (by hand): nothing to send."""


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
class GiveUp:
    """When a message the RIS keeps refusing (or not answering) is set aside in ``failed/``:
    after ``tries`` failed tries, the first at least ``age`` seconds ago, provided the RIS
    settled another message since that first one (else the RIS, not the message, is broken).

    Ten tries make a restart that comes long after the first one no reason to give up at
    once; an hour covers a RIS restarting, failing over, or waiting for the order of an
    exam it cannot place yet, while only that instance's later messages wait.

    Examples
    --------
    >>> limit = GiveUp(tries=10, age=3600.0)
    >>> limit.reached(Tries(10, 0.0, 0.0), now=3600.0, settled=10.0)
    True
    >>> limit.reached(Tries(9, 0.0, 0.0), now=3600.0, settled=10.0)  # not tried enough
    False
    >>> limit.reached(Tries(50, 0.0, 0.0), now=3599.0, settled=10.0)  # not for long enough
    False
    >>> limit.reached(Tries(50, 100.0, 0.0), now=9999.0, settled=50.0)  # nothing else went
    False
    """

    tries: int = 10
    age: float = 3600.0

    def reached(self, tries: Tries, now: float, settled: float | None) -> bool:
        """Whether a message with these failed ``tries`` is set aside now; ``settled``: when
        the RIS last accepted a message or refused one for good."""
        return (
            tries.count >= self.tries
            and now - tries.first >= self.age
            and settled is not None
            and settled > tries.first
        )


@dataclass(frozen=True)
class Attempt:
    """One attempt at sending a message: its verdict and what the RIS said.

    ``unanswered``: it was sent (in part or whole) and no answer came, so the RIS may have
    applied it; ``waited``: how long an answer was waited for.
    """

    verdict: Verdict
    reason: str
    status: int | None = None
    unanswered: bool = False
    timed_out: bool = False
    waited: float = 0.0


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
        Waits between attempts: at the same message while the RIS refuses it, at any while
        the RIS cannot be reached, and between tries while it refuses every message.
    idle_release : float
        Seconds without a message sent before the association is released.
    timeout : float
        Seconds the RIS has to accept the association and to answer each message (its TCP
        connection: 10 s at most); after a message went unanswered, answers are waited for
        twice as long, up to four times this.
    give_up : GiveUp
        When a message the RIS keeps refusing is set aside.
    rescan : float
        Seconds between two listings of the queue's folder (what :meth:`enqueue` queues is
        seen at once).

    Notes
    -----
    :meth:`enqueue` and :meth:`state` from any thread (the N-CREATE and N-SET handlers);
    :meth:`start` and :meth:`stop` from the server's.
    """

    def __init__(
        self,
        queue: ForwardQueue,
        target: ForwardTarget,
        calling_ae_title: str,
        *,
        backoff: Backoff | None = None,
        idle_release: float = 2.0,
        timeout: float = DEFAULT_TIMEOUT,
        give_up: GiveUp | None = None,
        rescan: float = 30.0,
    ) -> None:
        self.queue = queue
        self.target = target
        self.calling_ae_title = calling_ae_title
        self.backoff = backoff or Backoff()
        self.idle_release = idle_release
        self.timeout = timeout
        self.give_up = give_up or GiveUp()
        self.rescan = rescan
        #: Messages acknowledged, duplicates taken as delivered, messages moved to failed/
        #: (refused for good, set aside, or following their N-CREATE there).
        self.delivered = 0
        self.already_delivered = 0
        self.refused = 0
        self._wake = threading.Event()
        self._woken = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assoc: Any = None
        self._ae: Any = None
        self._down_since: float | None = None
        self._failures = 0
        #: The pending messages by sequence, in order; the instances whose N-CREATE failed.
        self._view: dict[int, Message] = {}
        self._failed_creates: set[str] = set()
        self._listed_at = -math.inf
        #: How long an answer is waited for now (raised after a timeout).
        self._patience = timeout
        #: The messages refused (or unanswered) since the RIS last settled one; while there
        #: are several, tries are paced (``_pause_until``, monotonic).
        self._refusing: set[int] = set()
        self._pause_until = 0.0
        self._settled = queue.last_settled

    # -- the server's side

    def start(self) -> None:
        """Log the queue's state and start sending."""
        LOGGER.info(
            "MPPS forwarding to %s as %s (answers awaited %g s): %s",
            self.target,
            self.calling_ae_title,
            self.timeout,
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
                # pynetdicom's send_n_create / send_n_set waits on the DIMSE queue until its
                # timeout even once aborted: an empty item ends the wait (as no answer)
                with contextlib.suppress(Exception):
                    assoc.dimse.msg_queue.put((None, None))
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
                message, wait = self._next()
                if message is not None:
                    self._handle(message)
                elif wait is None or wait > 0:
                    self._idle(wait)
        except Exception:  # a bug must not end forwarding silently
            LOGGER.exception("MPPS forwarding stopped by an unexpected error")
        finally:
            self._release()

    def _idle(self, wait: float | None) -> None:
        """Wait ``wait`` seconds (None: until woken) for a message; release the association
        once nothing was sent for ``idle_release``."""
        if self._assoc is not None:
            woken = self._wake.wait(
                self.idle_release if wait is None else min(wait, self.idle_release)
            )
            if not woken and (wait is None or wait >= self.idle_release):
                self._release()
        else:
            woken = self._wake.wait(wait)
        self._wake.clear()
        self._woken = self._woken or woken

    def _refresh(self) -> None:
        """List the queue's folder again: the messages in order, the failed N-CREATEs."""
        self.queue.take_appended()  # from now on: what is appended after the listing
        self._view = {m.sequence: m for m in self.queue.pending()}
        self._failed_creates = self.queue.failed_creates()
        self._listed_at = time.monotonic()

    def _next(self) -> tuple[Message | None, float | None]:
        """The message to send now, or how long until one may be sent (None: none queued).

        Each instance's oldest message is its only candidate; of those whose time has come,
        the oldest; the N-SETs of an instance whose N-CREATE is in ``failed/`` go there.
        """
        appended = self.queue.take_appended()
        woken, self._woken = self._woken, False
        if appended:
            self._pause_until = 0.0  # a new message is tried at once, even while pacing
            for message in appended:
                self._view.setdefault(message.sequence, message)
        elif woken:  # woken without a message it was told of: look
            self._listed_at = -math.inf
        if time.monotonic() - self._listed_at >= self.rescan:
            self._refresh()
        now = time.time()
        longest = max(self.backoff.most, 4 * self.timeout)
        seen: set[str] = set()
        orphans: list[Message] = []
        soonest: float | None = None
        chosen: Message | None = None
        for message in self._view.values():
            if message.uid in seen:
                continue  # its instance has an earlier message pending
            seen.add(message.uid)
            if message.kind is Kind.N_SET and message.uid in self._failed_creates:
                orphans.append(message)
                continue
            tries = self.queue.tries(message)
            due = 0.0 if tries is None or tries.next > now + longest else tries.next
            if due <= now:  # (a clock set back makes it due: the wait is bounded)
                chosen = message
                break
            soonest = due if soonest is None else min(soonest, due)
        for message in orphans:
            self._fail(message, "its N-CREATE is in failed/ (the RIS cannot have the instance)")
        if orphans:
            return None, 0.0  # the instances' next messages are candidates now
        if chosen is not None:
            pause = self._pause_until - time.monotonic()
            return (chosen, None) if pause <= 0 else (None, pause)
        return None, None if soonest is None else max(0.0, soonest - now)

    def _handle(self, message: Message) -> None:
        attempt = self._attempt(message)
        if attempt.verdict is Verdict.GONE:
            LOGGER.info("MPPS forwarding: %s not sent: %s", message.name, attempt.reason)
            self.queue.delete(message)  # forgets its tries
            self._view.pop(message.sequence, None)
            self._refusing.discard(message.sequence)
            return
        if attempt.verdict is Verdict.UNAVAILABLE:
            self._unavailable(attempt)
            return
        self._failures = 0
        if self._down_since is not None:
            LOGGER.info(
                "MPPS forwarding: %s available again after %s; %d queued",
                self.target,
                format_age(time.monotonic() - self._down_since),
                len(self._view),
            )
            self._down_since = None
        if attempt.verdict is Verdict.RETRY:
            self._retry_later(message, attempt)
            return
        self._settle()
        if attempt.verdict is Verdict.REFUSED:
            self._fail(message, attempt.reason)
            return
        self._delivered(message, attempt)

    def _unavailable(self, attempt: Attempt) -> None:
        """No association: log it once, wait, and try the same message again."""
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            LOGGER.warning(
                "MPPS forwarding: %s unavailable (%s); %d queued; retrying every %g to %g s",
                self.target,
                attempt.reason,
                len(self._view),
                self.backoff.first,
                self.backoff.most,
            )
        self._release(abort=True)
        self._stopping.wait(self.backoff.after(self._failures))

    def _settle(self) -> None:
        """The RIS settled a message (accepted it, or refused it for good): it works."""
        self._settled = time.time()
        if len(self._refusing) > 1:
            LOGGER.info(
                "MPPS forwarding: %s settles messages again, after refusing %d in a row",
                self.target,
                len(self._refusing),
            )
        self._refusing.clear()
        self._pause_until = 0.0

    def _delivered(self, message: Message, attempt: Attempt) -> None:
        before = self.queue.tries(message)
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
            return
        self._view.pop(message.sequence, None)
        after = "" if before is None else f" after {before.count + 1} tries"
        if attempt.verdict is Verdict.ALREADY_DELIVERED:
            LOGGER.info(
                "MPPS forwarding: %s already held by %s (%s): sent again after a restart or "
                "an unanswered try, taken as delivered%s",
                message.name,
                self.target,
                attempt.reason,
                after,
            )
            return
        log = LOGGER.warning if attempt.status in WARNING_STATUSES else LOGGER.info
        log("MPPS forwarded %s to %s%s: %s", message.name, self.target, after, attempt.reason)

    def _retry_later(self, message: Message, attempt: Attempt) -> None:
        """Refused for now, or not answered: record the try, and set the message aside once
        :attr:`give_up` says so."""
        now = time.time()
        before = self.queue.tries(message)
        count = 1 if before is None else before.count + 1
        unanswered = (0 if before is None else before.unanswered) + int(attempt.unanswered)
        wait = self.backoff.after(count)
        if attempt.unanswered:
            self._release(abort=True)  # nothing more on an association with a request open
            wait = max(wait, attempt.waited)  # the RIS may still be working on it
        if attempt.timed_out:
            self._patience = min(4 * self.timeout, max(self._patience, attempt.waited) * 2)
        tries = Tries(
            count, now if before is None else before.first, now + wait, unanswered, attempt.reason
        )
        known = message.sequence in self._refusing
        self._refusing.add(message.sequence)
        if len(self._refusing) > 1:
            pace = self.backoff.after(len(self._refusing) - 1)
            self._pause_until = time.monotonic() + pace
            if len(self._refusing) == 2 and not known:
                LOGGER.warning(
                    "MPPS forwarding: %s refused 2 messages in a row: one try at a time, up "
                    "to %g s apart, until it settles one; nothing is set aside meanwhile",
                    self.target,
                    self.backoff.most,
                )
        if self.give_up.reached(tries, now, self._settled):
            self._fail(
                message,
                f"set aside after {count} tries over {format_age(now - tries.first)}"
                f" ({unanswered} unanswered); last: {attempt.reason}",
            )
            return
        self.queue.record(message, tries, self._settled)
        if attempt.timed_out:
            LOGGER.warning(
                "MPPS forwarding: no answer from %s to %s within %g s: association aborted. "
                "It may have been applied: sent again in %s on a new association (a re-sent "
                "N-CREATE answered 0x0111, a final N-SET A710H, is taken as delivered); "
                "answers are now awaited %g s",
                self.target,
                message.name,
                attempt.waited,
                format_age(wait),
                self._patience,
            )
        elif count == 1:
            LOGGER.warning(
                "MPPS forwarding: %s not accepted by %s for now (%s); tried again in %s, the "
                "later messages of its instance waiting; set aside after %d tries over %s",
                message.name,
                self.target,
                attempt.reason,
                format_age(wait),
                self.give_up.tries,
                format_age(self.give_up.age),
            )
        else:
            LOGGER.debug(
                "MPPS forwarding: %s refused again, try %d (%s); next in %s",
                message.name,
                count,
                attempt.reason,
                format_age(wait),
            )

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
        self._view.pop(message.sequence, None)
        self._refusing.discard(message.sequence)
        if message.kind is Kind.N_CREATE:
            self._failed_creates.add(message.uid)
        self.refused += 1
        LOGGER.error(
            "MPPS forwarding: %s not forwarded to %s: %s; moved to %s",
            message.name,
            self.target,
            reason,
            where,
        )

    def _wait_for(self, message: Message) -> float:
        """How long an answer to ``message`` is waited for: the current patience, longer for
        a message that went unanswered before (also before a restart)."""
        tries = self.queue.tries(message)
        wait = self._patience
        if tries is not None and tries.unanswered:
            wait = max(wait, self.timeout * 2 ** min(tries.unanswered, 2))
        return min(wait, 4 * self.timeout)

    def _attempt(self, message: Message) -> Attempt:
        try:
            dataset = self.queue.read(message)
        except FileNotFoundError:
            return Attempt(Verdict.GONE, "its file was removed meanwhile")
        except DamagedMessage as exc:
            return Attempt(Verdict.REFUSED, f"damaged queue file: {exc}")
        except OSError as exc:
            return Attempt(Verdict.RETRY, f"cannot read {message.path}: {exc.strerror or exc}")
        assoc, problem = self._association()
        if assoc is None:
            return Attempt(Verdict.UNAVAILABLE, problem)
        wait = self._wait_for(message)
        assoc.dimse_timeout = assoc.network_timeout = wait
        started = time.monotonic()
        try:
            if message.kind is Kind.N_CREATE:
                status, _ = assoc.send_n_create(dataset, MPPS_SOP_CLASS, message.uid)
            else:
                status, _ = assoc.send_n_set(dataset, MPPS_SOP_CLASS, message.uid)
        except ValueError as exc:  # pynetdicom cannot encode it: it never can
            return Attempt(Verdict.REFUSED, f"cannot be encoded ({exc})")
        except RuntimeError as exc:  # the association ended before it was sent
            return Attempt(Verdict.UNAVAILABLE, f"the association ended ({exc})")
        except Exception as exc:  # it may have gone out in part, or whole
            waited = time.monotonic() - started
            return Attempt(Verdict.RETRY, f"sending failed ({exc})", None, True, False, waited)
        if status is None or "Status" not in status:
            waited = time.monotonic() - started
            if waited >= 0.9 * wait:
                reason = f"no answer within {wait:g} s"
                return Attempt(Verdict.RETRY, reason, None, True, True, wait)
            reason = "the association ended before an answer"
            return Attempt(Verdict.RETRY, reason, None, True, False, waited)
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
        if self._down_since is not None:
            # while it is down, try a bare connection first: pynetdicom logs every failed
            # association request as an ERROR, and the log says it is down once. Not
            # otherwise: a pynetdicom SCP holds a thread for its ACSE timeout for such a
            # connection (it waits for an A-ASSOCIATE-RQ), so once per outage, not per start
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
        if not opened:  # why (refused, no route, no answer ...): as a bare connection says
            why = connect_problem(t.host, t.port, min(self.timeout, 10.0))
            return None, why or f"cannot connect to {t.host}:{t.port}"
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
