"""Who may hold a connection or an association: the server's own association limits
(``--max-associations``, ``--max-associations-per-peer``), checked by the handlers."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from wlmserver.config import Config


class Admission:
    """Who may hold a connection or an association (one per server).

    pynetdicom counts, against its ``maximum_associations``, every connection, also those that
    have not sent an A-ASSOCIATE-RQ (yet, or ever): a few silent sockets from one host locked
    every modality out. Here the limits are checked by the handlers instead:

    - ``--max-associations`` counts associations (connections whose A-ASSOCIATE-RQ was
      accepted by these checks); one more is rejected, transient, "local limit exceeded";
    - ``--max-associations-per-peer`` bounds, per peer IP address, both the associations
      (rejected the same way) and the connections still waiting for their A-ASSOCIATE-RQ
      (closed at once: there is no request to reject yet, PS3.8 9.1.1 leaves accepting the
      transport connection to the acceptor); those wait at most the ACSE timeout.

    Counts are taken over the live association threads, so a slot is free as soon as its
    association is released, aborted or rejected, or its thread ends, whatever ended it.

    Parameters
    ----------
    config : Config
        The limits.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()

    def use(self, config: Config) -> None:
        """Apply ``config``'s limits from the next connection or association on (a reload);
        those already admitted stay, even over a lower limit."""
        with self._lock:
            self.config = config

    def _live(self, exclude: Any) -> list[Any]:
        return [a for a in list(self._open) if a is not exclude and _holds_a_slot(a)]

    def connection_opened(self, assoc: Any) -> int | None:
        """Register a new connection; the number of waiting connections of its host if that
        is already the limit (the connection must then be closed), else None."""
        address = assoc.requestor.address
        with self._lock:
            waiting = [
                a for a in self._live(assoc) if a.requestor.address == address and not admitted(a)
            ]
            if len(waiting) >= self.config.max_associations_per_peer:
                return len(waiting)
            self._open.add(assoc)
        return None

    def admit(self, assoc: Any) -> str | None:
        """Admit an association whose A-ASSOCIATE-RQ arrived; why not, or None."""
        address = assoc.requestor.address
        with self._lock:
            open_now = [a for a in self._live(assoc) if admitted(a)]
            if len(open_now) >= self.config.max_associations:
                return f"{len(open_now)} associations open (--max-associations)"
            mine = sum(1 for a in open_now if a.requestor.address == address)
            if mine >= self.config.max_associations_per_peer:
                return f"{mine} associations open from {address} (--max-associations-per-peer)"
            assoc.__dict__["_wlmserver_admitted"] = True
            self._open.add(assoc)
        return None


def _holds_a_slot(assoc: Any) -> bool:
    """Whether a connection still counts against the limits: its thread has not ended, and
    its association was not released, aborted or rejected. A peer that releases and asks
    again at once (a modality's next query, a client pool at its limit) is not refused
    because the released association's thread is still closing its socket."""
    if assoc.ident is not None and not assoc.is_alive():
        return False
    return not (assoc.is_released or assoc.is_aborted or assoc.is_rejected)


def admitted(assoc: Any) -> bool:
    """Whether :meth:`Admission.admit` admitted this association."""
    return bool(assoc.__dict__.get("_wlmserver_admitted"))
