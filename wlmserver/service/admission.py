"""Who may hold a connection or an association: the server's own limits
(``--max-associations``, ``--max-associations-per-peer``, ``--max-pending-connections``, and
the threads they imply), checked as each connection is accepted and as its association request
arrives.

Every connection costs two threads (pynetdicom's association and upper-layer threads) from the
moment it is accepted. Without a bound on connections that have not sent their association
request, a crowd of silent sockets (600 held gave 353 threads, and "can't start new thread"
tracebacks at about 1,500 under a 4 GB address-space limit) exhausted the process; and an IPv6
host has a /64 of addresses to spread its connections over.
"""

from __future__ import annotations

import ipaddress
import threading
import weakref
from typing import Any

from wlmserver.config import Config

#: Threads beyond those of the connections the limits allow (the listeners, the watcher, the
#: indexer, the forwarder, retention, a connection's short-lived start-up thread ...).
THREAD_HEADROOM = 64

#: Prefix length of the IPv6 networks counted as one peer (RFC 4291 2.5.1: a /64 is one link,
#: the smallest network a site is given; one host may hold any address in it).
IPV6_PEER_PREFIX = 64


def peer_group(address: str) -> str:
    """What one peer is, for the per-peer limits: an IPv4 address (also an IPv4-mapped IPv6
    one), or the /64 of an IPv6 address; anything else as given.

    Examples
    --------
    >>> peer_group("10.1.2.3"), peer_group("::ffff:10.1.2.3")
    ('10.1.2.3', '10.1.2.3')
    >>> peer_group("2001:db8:1:2:aaaa::1") == peer_group("2001:db8:1:2:bbbb::7")
    True
    >>> peer_group("2001:db8:1:2::1")
    '2001:db8:1:2::/64'
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PEER_PREFIX), strict=False))
    return str(ip)


def thread_limit(config: Config) -> int:
    """Threads at most while a connection is accepted: two per connection the limits allow
    (``--max-associations`` plus ``--max-pending-connections``), plus :data:`THREAD_HEADROOM`.

    Examples
    --------
    >>> from pathlib import Path
    >>> thread_limit(Config(Path(".")))  # the defaults: 50 associations, 50 pending
    264
    """
    return 2 * (config.max_associations + config.max_pending_connections) + THREAD_HEADROOM


class _Pending:
    """A connection accepted and not yet admitted: its socket and its peer."""

    __slots__ = ("group", "requested", "sock")

    def __init__(self, sock: Any, group: str) -> None:
        self.sock = sock
        self.group = group
        self.requested = False

    def waiting(self) -> bool:
        """Still open and without its association request."""
        if self.requested:
            return False
        try:
            return bool(self.sock.fileno() != -1)
        except (OSError, ValueError):
            return False


class Admission:
    """Who may hold a connection or an association (one per server).

    pynetdicom counts, against its ``maximum_associations``, every connection, also those that
    have not sent an A-ASSOCIATE-RQ (yet, or ever): a few silent sockets from one host locked
    every modality out. Here the limits are checked by the server instead:

    - when a connection is accepted (:meth:`accept`, in the listener's thread, before any
      thread is started for it), it is closed at once while ``--max-pending-connections``
      connections (from all hosts) are waiting for their A-ASSOCIATE-RQ, while its peer has
      ``--max-associations-per-peer`` waiting, or while the process runs
      :func:`thread_limit` threads; there is no request to reject yet (PS3.8 9.1.1 leaves
      accepting the transport connection to the acceptor). Those waiting wait at most the
      ACSE timeout;
    - ``--max-associations`` counts associations (connections whose A-ASSOCIATE-RQ was
      accepted by these checks); one more is rejected, transient, "local limit exceeded";
    - ``--max-associations-per-peer`` bounds, per peer, the associations (rejected the same
      way) too.

    A peer is an IPv4 address, or an IPv6 /64 (:func:`peer_group`). Counts are taken over the
    live connections and association threads, so a slot is free as soon as its connection
    closes, its association is released or aborted, or its thread ends, whatever ended it.

    Parameters
    ----------
    config : Config
        The limits.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()
        self._pending: dict[int, _Pending] = {}

    def use(self, config: Config) -> None:
        """Apply ``config``'s limits from the next connection or association on (a reload);
        those already admitted stay, even over a lower limit."""
        with self._lock:
            self.config = config

    def _live(self, exclude: Any) -> list[Any]:
        """The associations that hold a slot (see :func:`_holds_a_slot`)."""
        return [a for a in list(self._open) if a is not exclude and _holds_a_slot(a)]

    def _waiting(self) -> list[_Pending]:
        """The connections waiting for their request (the caller holds the lock); forgets the
        others."""
        for key in [k for k, p in self._pending.items() if not p.waiting()]:
            del self._pending[key]
        return list(self._pending.values())

    def accept(self, sock: Any, address: str) -> str | None:
        """A connection was accepted (before any thread is started for it): register it, or
        say why it must be closed at once.

        Examples
        --------
        >>> import socket
        >>> from pathlib import Path
        >>> admission = Admission(Config(Path("."), max_pending_connections=1))
        >>> a, b = socket.socketpair()
        >>> admission.accept(a, "10.0.0.1") is None
        True
        >>> admission.accept(b, "10.0.0.2")
        '1 connections are waiting for their association request (--max-pending-connections)'
        >>> a.close(); admission.accept(b, "10.0.0.2") is None
        True
        >>> b.close()
        """
        group = peer_group(address)
        config = self.config
        with self._lock:
            waiting = self._waiting()
            if len(waiting) >= config.max_pending_connections:
                return (
                    f"{len(waiting)} connections are waiting for their association request "
                    "(--max-pending-connections)"
                )
            mine = sum(1 for p in waiting if p.group == group)
            if mine >= config.max_associations_per_peer:
                return (
                    f"{mine} connections from {group} are waiting for their association "
                    "request (--max-associations-per-peer)"
                )
            threads = threading.active_count()
            if threads >= thread_limit(config):
                return (
                    f"{threads} threads running (at most {thread_limit(config)}: "
                    "--max-associations and --max-pending-connections)"
                )
            self._pending[id(sock)] = _Pending(sock, group)
        return None

    def connection_opened(self, assoc: Any) -> int | None:
        """Register a new connection's association; the number of waiting connections of its
        peer if that is already the limit (the connection must then be closed), else None.

        A connection :meth:`accept` registered passed that check already; one accepted
        otherwise (a server built without :class:`Listener`) is checked here."""
        sock = getattr(getattr(assoc, "dul", None), "socket", None)
        sock = getattr(sock, "socket", None)
        with self._lock:
            if sock is not None and id(sock) in self._pending:
                self._open.add(assoc)
                return None
            group = peer_group(assoc.requestor.address)
            waiting = [
                a
                for a in self._live(assoc)
                if peer_group(a.requestor.address) == group and not admitted(a)
            ]
            if len(waiting) >= self.config.max_associations_per_peer:
                return len(waiting)
            self._open.add(assoc)
        return None

    def requested(self, assoc: Any) -> None:
        """The connection's A-ASSOCIATE-RQ arrived: it no longer waits."""
        sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
        with self._lock:
            pending = self._pending.pop(id(sock), None) if sock is not None else None
            if pending is not None:
                pending.requested = True

    def admit(self, assoc: Any) -> str | None:
        """Admit an association whose A-ASSOCIATE-RQ arrived; why not, or None."""
        self.requested(assoc)
        group = peer_group(assoc.requestor.address)
        with self._lock:
            open_now = [a for a in self._live(assoc) if admitted(a)]
            if len(open_now) >= self.config.max_associations:
                return f"{len(open_now)} associations open (--max-associations)"
            mine = sum(1 for a in open_now if peer_group(a.requestor.address) == group)
            if mine >= self.config.max_associations_per_peer:
                return f"{mine} associations open from {group} (--max-associations-per-peer)"
            assoc.__dict__["_wlmserver_admitted"] = True
            self._open.add(assoc)
        return None

    def waiting(self) -> int:
        """How many connections are waiting for their association request."""
        with self._lock:
            return len(self._waiting())


def _holds_a_slot(assoc: Any) -> bool:
    """Whether a connection still counts against the limits: its thread has not ended, and
    its association was not released, aborted or rejected. A peer that releases and asks
    again at once (a modality's next query, a client pool at its limit) is not refused
    because the released association's thread is still closing its socket."""
    if assoc.ident is not None and not assoc.is_alive():
        return False
    return not any(
        getattr(assoc, state, False) for state in ("is_released", "is_aborted", "is_rejected")
    )


def admitted(assoc: Any) -> bool:
    """Whether :meth:`Admission.admit` admitted this association."""
    return bool(assoc.__dict__.get("_wlmserver_admitted"))
