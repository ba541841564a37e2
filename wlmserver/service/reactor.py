"""Let pynetdicom's per-association threads wait for work instead of polling for it.

Each pynetdicom association runs two threads that poll: the association's reactor sleeps 1 ms
between checks of its message queue, and the DUL (upper layer) reactor sleeps 1 ms between
checks of its socket and its send queue. That is about 2,000 wake-ups a second per open
association: measured here, 8 idle associations cost the server 0.5 of a core, and under load
the polling took most of the CPU of a C-FIND (a server answering a 47-answer query from 8
clients went from 110 to 190 queries/s without it).

:func:`install` replaces those two sleeps, and only those (the caller's frame is checked),
while an *accepted* association is established (state Sta6; PS3.8 9.2):

- the DUL thread waits in ``select`` on its socket and on a wake-up socket pair, so incoming
  data wakes it at once, and so does a primitive queued for sending (``send_pdu`` and
  ``kill_dul`` are wrapped to signal it); it wakes at least every :data:`DUL_IDLE` seconds;
- the association thread waits on an event that the DUL thread sets whenever it goes idle
  (after handling what arrived), and wakes at least every :data:`ASSOCIATION_IDLE` seconds
  (its network-timeout checks have that resolution).

Everything else (negotiation, release, abort, the requestor side, other sleeps) keeps
pynetdicom's own timing. If this pynetdicom lacks the internals it relies on, nothing is
changed and a warning is logged.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys
import threading
import time
from typing import Any

LOGGER = logging.getLogger(__name__)

#: Longest wait of an idle DUL thread of an established accepted association, seconds.
DUL_IDLE = 0.1
#: Longest wait of the association thread between its checks, seconds.
ASSOCIATION_IDLE = 0.05

_installed = False


class _Waker:
    """A socket pair: a byte written to one end makes ``select`` on the other return."""

    __slots__ = ("receiver", "sender")

    def __init__(self) -> None:
        self.receiver, self.sender = socket.socketpair()
        self.receiver.setblocking(False)
        self.sender.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self.sender.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.receiver.recv(4096):
                pass

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


class _Clock:
    """Stands in for the ``time`` module inside one pynetdicom module: ``sleep`` called from
    that module's reactor loop waits for work; every other use is the real ``time``."""

    def __init__(self, loop_code: Any, wait: Any) -> None:
        self._loop_code = loop_code
        self._wait = wait

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if sys._getframe(1).f_code is self._loop_code:
            self._wait(threading.current_thread(), seconds)
        else:
            time.sleep(seconds)


def _association_event(assoc: Any) -> threading.Event:
    event = assoc.__dict__.get("_wlmserver_work")
    if event is None:
        event = assoc.__dict__.setdefault("_wlmserver_work", threading.Event())
    return event  # type: ignore[no-any-return]


def _waker(dul: Any) -> _Waker | None:
    return dul.__dict__.get("_wlmserver_waker")  # type: ignore[no-any-return]


def _dul_wait(dul: Any, seconds: float) -> None:
    """The DUL reactor's idle sleep."""
    assoc = getattr(dul, "assoc", None)
    if assoc is None or not assoc.is_acceptor:
        time.sleep(seconds)
        return
    _association_event(assoc).set()  # what arrived has been handled: let it look
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if (
        sock is None
        or dul._kill_thread
        or dul.state_machine.current_state != "Sta6"
        or not dul.to_provider_queue.empty()
    ):
        time.sleep(seconds)
        return
    waker = _waker(dul)
    if waker is None:
        waker = dul.__dict__["_wlmserver_waker"] = _Waker()
        if not dul.to_provider_queue.empty():  # queued before the waker existed
            return
    try:
        select.select([sock, waker.receiver], [], [], DUL_IDLE)
    except (OSError, ValueError):  # the socket was closed meanwhile
        time.sleep(seconds)
        return
    waker.drain()


def _association_wait(assoc: Any, seconds: float) -> None:
    """The association reactor's sleep between checks."""
    if not assoc.is_acceptor or not assoc.is_established or assoc._kill:
        time.sleep(seconds)
        return
    event = _association_event(assoc)
    event.wait(ASSOCIATION_IDLE)
    event.clear()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed


def install() -> bool:
    """Make established accepted associations wait for work (see the module docstring).

    Returns
    -------
    bool
        Whether it is in effect (False with a pynetdicom whose internals differ).
    """
    global _installed
    if _installed:
        return True
    try:
        from pynetdicom import association, dul
        from pynetdicom.association import Association
        from pynetdicom.dul import DULServiceProvider

        dul_loop = DULServiceProvider.run_reactor.__code__
        association_loop = Association._run_reactor.__code__
        originals = (
            DULServiceProvider.run_reactor,
            DULServiceProvider.send_pdu,
            DULServiceProvider.kill_dul,
        )
        if getattr(dul, "time", None) is not time or getattr(association, "time", None) is not time:
            raise AttributeError("pynetdicom's modules do not use the time module")
    except (ImportError, AttributeError) as exc:
        LOGGER.warning("pynetdicom's reactors keep polling (%s)", exc)
        return False
    run_reactor, send_pdu, kill_dul = originals

    def run_reactor_closing(self: Any) -> None:
        try:
            run_reactor(self)
        finally:
            waker = self.__dict__.pop("_wlmserver_waker", None)
            if waker is not None:
                waker.close()
            assoc = getattr(self, "assoc", None)
            if assoc is not None:
                _association_event(assoc).set()

    def send_pdu_waking(self: Any, primitive: Any) -> None:
        send_pdu(self, primitive)
        waker = _waker(self)
        if waker is not None:
            waker.wake()

    def kill_dul_waking(self: Any) -> None:
        kill_dul(self)
        waker = _waker(self)
        if waker is not None:
            waker.wake()

    DULServiceProvider.run_reactor = run_reactor_closing  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = send_pdu_waking  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul_waking  # type: ignore[method-assign]
    setattr(dul, "time", _Clock(dul_loop, _dul_wait))  # noqa: B010 - its module global
    setattr(association, "time", _Clock(association_loop, _association_wait))  # noqa: B010
    _installed = True
    return True
