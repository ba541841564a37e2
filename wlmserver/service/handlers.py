"""Thin pynetdicom glue: accept or refuse an association, answer C-ECHO and C-FIND.

Handlers get their collaborators (the store and the config) as bound arguments, never globals,
and never read the disk while answering a C-FIND: they match against the store's in-memory
snapshot of the called AE title's folder.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from wlmserver.config import Config
from wlmserver.config.profiles import Profile
from wlmserver.matching.answers import build_answer, build_encoded
from wlmserver.matching.encoding import DEFAULT_DEFLATE_LEVEL, EncodedAnswer
from wlmserver.matching.keys import describe_tag
from wlmserver.matching.mpps import PerformedSteps
from wlmserver.matching.narrow import narrow
from wlmserver.matching.query import QueryError, compile_query, fit_comment
from wlmserver.matching.status import Status
from wlmserver.matching.stepstatus import StatusView, asks_for_status
from wlmserver.service import capture, reactor
from wlmserver.service import fastpath as encode
from wlmserver.service.admission import Admission
from wlmserver.service.identifier import refused_before_decoding
from wlmserver.service.tls import negotiated_version, peer_identities
from wlmserver.store.index import FolderSnapshot, WorklistStore, is_safe_ae_title
from wlmserver.store.mpps import MppsStore

LOGGER = logging.getLogger(__name__)
NO_STEPS = PerformedSteps()

# A-ASSOCIATE-RJ: rejected permanent, by the service user, "called AE title not recognized"
_REJECT_CALLED_AET = (0x01, 0x01, 0x07)
# A-ASSOCIATE-RJ: rejected transient, by the service provider (presentation related),
# "local limit exceeded" (PS3.8 9.3.4)
_REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# A-ASSOCIATE-RJ: rejected permanent, by the service user, "no reason given" (PS3.8 9.3.4):
# what wlmscpfs sends for --refuse and --reject
_REJECT_NO_REASON = (0x01, 0x01, 0x01)

FindResponse = tuple[int | Dataset, Dataset | None]


def called_ae_title(assoc: Any) -> str:
    """The AE title the requestor called, without padding."""
    return str(assoc.requestor.primitive.called_ae_title).strip()


def peer_of(assoc: Any) -> str:
    """``CALLING@address:port``, for logs."""
    requestor = assoc.requestor
    calling = getattr(requestor.primitive, "calling_ae_title", None) or requestor.ae_title
    return f"{str(calling).strip()}@{requestor.address}:{requestor.port}"


def resolve_folder(store: WorklistStore, config: Config, aet: str) -> FolderSnapshot | None:
    """The folder serving a called AE title, or None.

    The title is validated before it touches the file system. A folder created since the
    last scan is picked up here, so a new AE folder is served even before its watch event.
    """
    if not is_safe_ae_title(aet):
        return None
    folder = store.folder(aet)
    if folder is None and (store.root / aet).is_dir():
        store.scan_folder(aet)
        folder = store.folder(aet)
    if folder is None and config.any_aet_folder:
        folder = store.folder(config.any_aet_folder)
    return folder


def is_served(store: WorklistStore, config: Config, aet: str) -> bool:
    """Whether a called AE title is served. While the first index is being built, a folder
    on disk is enough (it is not scanned here, so C-ECHO is answered at once)."""
    if store.ready.is_set():
        return resolve_folder(store, config, aet) is not None
    return is_safe_ae_title(aet) and (
        (store.root / aet).is_dir() or config.any_aet_folder is not None
    )


def forced_refusal(assoc: Any, config: Config) -> str | None:
    """Why wlmscpfs's ``--refuse`` or ``--reject`` refuses an association, or None.

    ``--reject`` refuses a request without an Implementation Class UID (the sub-item PS3.8
    9.3.2.3.3 and PS3.7 D.3.3.2 require; pynetdicom accepts a request without it).
    """
    if config.refuse_associations:
        return "rejected: every association is refused (--refuse)"
    if config.reject_without_implementation_uid and not assoc.requestor.implementation_class_uid:
        return "rejected: no Implementation Class UID (--reject)"
    return None


def _titles(pdu: bytes) -> tuple[str, str]:
    """The called and calling AE titles of an A-ASSOCIATE-RQ PDU, from their fixed places
    (PS3.8 Table 9-11: bytes 11-26 and 27-42), as pynetdicom reads them."""
    return (
        pdu[10:26].decode("ascii", "replace").strip(),
        pdu[26:42].decode("ascii", "replace").strip(),
    )


def refuse_early(assoc: Any, config: Config, pdu: bytes) -> tuple[int, int, int] | None:
    """Refuse an A-ASSOCIATE-RQ from its bytes, before pynetdicom decodes its items: with
    ``--refuse``, or when the allow-lists or ``[access.certificates]`` refuse its address or
    its AE titles (the two fixed fields of the PDU); the A-ASSOCIATE-RJ to send, or None.

    A request of 64 KiB of junk items cost pynetdicom a tenth of a second of CPU to decode and
    a WARNING line per item (2,300 lines for one, from a host the allow-list refused anyway):
    a peer that is refused now costs one line, which the log's rate limit bounds too.
    :func:`handle_requested` checks the same again on what pynetdicom decoded (the
    Implementation Class UID of ``--reject`` is among the items)."""
    called, calling = _titles(pdu)
    assoc.__dict__["_wlmserver_titles"] = (calling, called)  # for the association's end line
    peer = f"{calling}@{assoc.requestor.address}:{assoc.requestor.port}"
    if config.refuse_associations:
        assoc.__dict__["_wlmserver_end"] = "rejected: every association is refused (--refuse)"
        return _REJECT_NO_REASON
    refused = config.access.refusal(
        calling, called, str(assoc.requestor.address)
    ) or config.access.certificate_refusal(calling, peer_identities(assoc))
    if refused is None:
        return None
    _log_rejected(peer, called, refused.reason)
    assoc.__dict__["_wlmserver_end"] = f"rejected: {refused.reason}"
    return refused.reject


def _log_rejected(peer: str, aet: str, reason: str) -> None:
    LOGGER.warning("association from %s to %s rejected: %s", peer, aet, reason)


def handle_requested(
    event: Any, store: WorklistStore, config: Config, admission: Admission | None = None
) -> None:
    """EVT_REQUESTED: refuse every association with ``--refuse`` and one without an
    Implementation Class UID with ``--reject`` (see :func:`forced_refusal`), then one that the
    allow-lists do not allow (:class:`~wlmserver.config.access.Access`) or whose calling AE
    title and client certificate are not tied as ``[access.certificates]`` says (see
    :mod:`wlmserver.config.certificates`), one whose called AE title has no folder, or one
    over the association limits (see :class:`Admission`).

    The allow-lists are checked before the called AE title, so that a peer they refuse
    learns nothing of which AE titles are served. Most refusals happen before this, on the
    request's bytes (:func:`refuse_early`)."""
    assoc = event.assoc
    forced = forced_refusal(assoc, config)
    if forced is not None:
        assoc.__dict__["_wlmserver_end"] = forced
        assoc.acse.send_reject(*_REJECT_NO_REASON)
        assoc.kill()
        return
    aet = called_ae_title(assoc)
    calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
    refused = config.access.refusal(
        calling, aet, str(assoc.requestor.address)
    ) or config.access.certificate_refusal(calling, peer_identities(assoc))
    if refused is not None:
        _log_rejected(peer_of(assoc), aet, refused.reason)
        assoc.__dict__["_wlmserver_end"] = f"rejected: {refused.reason}"
        assoc.acse.send_reject(*refused.reject)
        assoc.kill()
        return
    if not is_served(store, config, aet):
        LOGGER.info(
            "association from %s rejected: called AE title %r not recognized (no folder %s)",
            peer_of(assoc),
            aet,
            store.root / aet if is_safe_ae_title(aet) else "(unsafe title)",
        )
        assoc.__dict__["_wlmserver_end"] = "rejected: called AE title not recognized"
        assoc.acse.send_reject(*_REJECT_CALLED_AET)
        assoc.kill()  # as pynetdicom's own rejections do: lets the RJ PDU go out first
        return
    refusal = admission.admit(assoc) if admission is not None else None
    if refusal is not None:
        LOGGER.warning(
            "association from %s to %s rejected (transient, local limit exceeded): %s",
            peer_of(assoc),
            aet,
            refusal,
        )
        assoc.__dict__["_wlmserver_end"] = "rejected: local limit exceeded"
        assoc.acse.send_reject(*_REJECT_LOCAL_LIMIT)
        assoc.kill()


def _first(*seconds: float | None) -> float | None:
    return next((s for s in seconds if s is not None), None)


def handle_connection_open(
    event: Any, config: Config | None = None, admission: Admission | None = None
) -> None:
    """EVT_CONN_OPEN: bound what the connection may hold, disable Nagle's algorithm (which
    otherwise stalls each exchange), and close it at once when its host already has
    ``--max-associations-per-peer`` connections waiting for their A-ASSOCIATE-RQ.

    pynetdicom's accepted sockets have no timeout: a peer that stopped reading held the thread
    writing to it (and its slot) forever. The socket gets the network timeout (else the DIMSE,
    else the ACSE timeout) for its writes, direct ones (:mod:`~wlmserver.service.fastpath`)
    included; reads are bounded per PDU by :func:`~wlmserver.service.reactor.read_pdu`.
    """
    assoc = event.assoc
    assoc.__dict__["_wlmserver_started"] = time.monotonic()
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config is None:
        return
    if sock is not None:
        sock.settimeout(_first(config.network_timeout, config.dimse_timeout, config.acse_timeout))
    reactor.set_limits(
        assoc,
        reactor.Limits(
            associate_rq=reactor.DEFAULT_LIMITS.associate_rq,
            command=reactor.DEFAULT_LIMITS.command,
            data_set=max(
                config.max_identifier_size * IDENTIFIER_ABORT_FACTOR,
                config.max_mpps_size * MPPS_ABORT_FACTOR,
            ),
        ),
    )
    reactor.on_end(assoc, lambda a: association_ended(a, config))
    reactor.check_request(assoc, lambda pdu: refuse_early(assoc, config, pdu))
    waiting = admission.connection_opened(assoc) if admission is not None else None
    if waiting is not None and sock is not None:
        LOGGER.warning(
            "connection from %s:%s closed: %d connections from this host are waiting for "
            "their association request (--max-associations-per-peer)",
            assoc.requestor.address,
            assoc.requestor.port,
            waiting,
        )
        reactor.close_early(assoc, sock, "closed: too many connections from this host")


#: A data set this many times ``--max-identifier-size`` aborts the association while it
#: arrives (up to that size it is received and answered with a failure status naming the
#: limit): memory per association stays bounded whatever a peer sends.
IDENTIFIER_ABORT_FACTOR = 16
#: The same for an N-CREATE or N-SET data set over ``--max-mpps-size`` (1 MiB by default: a
#: data set up to twice that is answered 0x0213, a longer one aborts the association).
MPPS_ABORT_FACTOR = 2


def _how_it_ended(assoc: Any) -> str:
    reason = reactor.end_reason(assoc)
    if reason:
        return str(reason)
    if assoc.is_released:
        return "released"
    if assoc.is_aborted:
        return "aborted"
    if assoc.is_rejected:
        return "rejected"
    if getattr(assoc.requestor, "primitive", None) is None:
        return "closed before an association request"
    return "connection closed"


def association_ended(assoc: Any, config: Config) -> None:
    """One line per association: calling and called AE title, peer, duration, queries, how
    it ended (no patient data)."""
    started = assoc.__dict__.get("_wlmserver_started", time.monotonic())
    primitive = getattr(assoc.requestor, "primitive", None)
    calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    if primitive is None:  # refused before pynetdicom decoded the request (refuse_early)
        calling, called = assoc.__dict__.get("_wlmserver_titles", ("", ""))
    fields = {
        "event": "association",
        "calling_aet": calling,
        "called_aet": called,
        "peer": f"{assoc.requestor.address}:{assoc.requestor.port}",
        "seconds": round(time.monotonic() - started, 3),
        "queries": int(assoc.__dict__.get("_wlmserver_queries", 0)),
        "ended": _how_it_ended(assoc),
    }
    tls_version = negotiated_version(assoc)  # TLS: "TLSv1.3", or None over plain TCP
    if tls_version:
        fields["tls"] = tls_version
    LOGGER.info(
        "association %s -> %s from %s%s: %s after %.1f s, %d queries",
        calling or "-",
        called or "-",
        fields["peer"],
        f" ({tls_version})" if tls_version else "",
        fields["ended"],
        fields["seconds"],
        fields["queries"],
        extra={"fields": fields},
    )


def handle_echo(event: Any) -> int:
    """EVT_C_ECHO: Verification always succeeds."""
    LOGGER.debug("C-ECHO from %s", peer_of(event.assoc))
    return int(Status.SUCCESS)


#: How long a C-FIND waits for the first index of the database before giving up.
INDEX_WAIT_SECONDS = 120.0

#: Every this many answers, the handler lets pynetdicom read what the peer sent (see below).
CANCEL_CHECK_EVERY = 32


def _let_the_peer_speak(assoc: Any, timeout: float = 0.05) -> None:
    """Give pynetdicom's reactor a chance to read incoming PDUs (a C-CANCEL).

    Its DUL thread reads from the socket only in a loop iteration with nothing to send. Pending
    answers normally bypass its send queue (see :mod:`~wlmserver.service.fastpath`), so it keeps
    reading
    and this returns at once; when they go through the queue (debug logging of pynetdicom, or
    a pynetdicom without the internals the fast path uses), a handler streaming answers would
    keep the queue full and a C-CANCEL would not be seen until all answers were sent, so this
    waits for the queue to drain, then a couple of reactor loops (about 2 ms per
    :data:`CANCEL_CHECK_EVERY` answers).
    """
    outgoing = getattr(getattr(assoc, "dul", None), "to_provider_queue", None)
    if outgoing is None or outgoing.empty():
        return
    deadline = time.monotonic() + timeout
    while not outgoing.empty() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(0.002)


def failure(status: Status, comment: str, tags: tuple[int, ...] = ()) -> Dataset:
    """A failure status dataset with ErrorComment (fitted to its 64 characters, LO, keeping the
    rule the user must follow) and the OffendingElement list (PS3.7 C.4.1.1.4)."""
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = fit_comment(comment)
    if tags:
        ds.OffendingElement = list(tags)
    return ds


def _offending(exc: QueryError) -> str:
    return ", ".join(describe_tag(t) for t in exc.tags) or "identifier"


def _rule(exc: QueryError) -> str:
    """The rule of a query error, without the keyword that :func:`_offending` names."""
    subject, colon, rule = exc.message.partition(": ")
    return rule if colon and exc.tags and " " not in subject else exc.message


def _capture(
    assoc: Any,
    config: Config,
    identifier: Dataset,
    aet: str,
    peer: str,
    notes: tuple[str, ...] = (),
) -> None:
    """Write the request to ``--request-file-path``; a failure is logged, the query goes on."""
    assert config.request_file_path is not None
    calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
    try:
        path = capture.write_request(
            config.request_file_path,
            config.request_file_format,
            identifier,
            calling=calling,
            called=aet,
            notes=notes,
            limits=capture.CaptureLimits(config.max_capture_files, config.max_capture_size),
        )
    except (OSError, ValueError, TypeError) as exc:
        # the file's name may hold the patient ID (#p): say why, and where, not which file
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        LOGGER.warning(
            "C-FIND from %s: cannot write a request file into %s: %s",
            peer,
            config.request_file_path,
            reason,
        )
        return
    LOGGER.debug("C-FIND from %s: request written to %s", peer, path)  # #p: patient data


def _log_query(
    event: Any,
    peer: str,
    aet: str,
    answers: int,
    started: float,
    status: int,
    text: str,
    *args: Any,
    level: int = logging.INFO,
    profile: Profile | None = None,
) -> None:
    """The one line per query, ``C-FIND from <peer> to <aet>`` and ``text``, with its fields
    for ``--log-json``; ``[profile NAME]`` ends it when a modality profile applied."""
    assoc = event.assoc
    primitive = getattr(assoc.requestor, "primitive", None)
    fields = {
        "event": "query",
        "calling_aet": str(getattr(primitive, "calling_ae_title", "") or "").strip(),
        "called_aet": aet,
        "peer": f"{assoc.requestor.address}:{assoc.requestor.port}",
        "answers": answers,
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "status": f"0x{status:04X}",
    }
    if profile is not None and not profile.is_neutral:
        fields["profile"] = profile.name
        text += " [profile %s]"
        args = (*args, profile.name)
    tls_version = negotiated_version(assoc)  # TLS: in the JSON fields only
    if tls_version:
        fields["tls"] = tls_version
    LOGGER.log(level, "C-FIND from %s to %s" + text, peer, aet, *args, extra={"fields": fields})


def profile_notes(profile: Profile, narrowed: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What a request capture says of the modality profile that applied (nothing when no
    profile changes anything)."""
    if profile.is_neutral:
        return ()
    added = f"; added {'; '.join(narrowed)}" if narrowed else ""
    return (f"wlmserver profile: {profile.name}{added}",)


def handle_find(
    event: Any, store: WorklistStore, config: Config, mpps: MppsStore | None = None
) -> Iterator[FindResponse]:
    """EVT_C_FIND: one Pending answer per matching scheduled procedure step, then Success.

    Invalid identifiers get a failure status naming the offending element; a C-CANCEL between
    answers ends the operation with Cancel. An identifier over ``--max-identifier-size``
    bytes, one that does not decode (a length past its end, bytes not valid in its character
    set) or a value over ``--max-value-length`` characters gets 0xC000 (Unable to process)
    with an ErrorComment naming the limit or the problem. After ``--max-answers`` answers
    the operation ends with 0xA700 (Refused: Out of Resources, PS3.4 K.4.1.1.4): the answers
    sent are not the whole worklist, which Success would claim.

    Each step is answered with its status as an MPPS reported it (``mpps``; see
    :mod:`wlmserver.matching.stepstatus`), and steps whose status is hidden
    (``--hide-status``, or the profile's) are not answered unless the query asks for a status;
    nor are steps past retention (``--retention-days``, by their scheduled date).
    """
    started = time.perf_counter()
    aet = called_ae_title(event.assoc)
    peer = peer_of(event.assoc)
    with contextlib.suppress(AttributeError, TypeError):
        event.assoc.__dict__["_wlmserver_queries"] = (
            event.assoc.__dict__.get("_wlmserver_queries", 0) + 1
        )
    refused = refused_before_decoding(event, config)
    if refused is not None:
        status, comment = refused
        _log_query(
            event,
            peer,
            aet,
            0,
            started,
            status,
            " refused: %s; status 0x%04X",
            comment,
            int(status),
            level=logging.WARNING,
        )
        yield failure(status, comment), None
        return
    try:
        identifier = event.identifier
    except Exception as exc:  # pynetdicom decodes lazily and may fail here
        LOGGER.warning("C-FIND from %s: cannot decode the identifier: %s", peer, exc)
        yield failure(Status.UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}"), None
        return
    LOGGER.debug("C-FIND from %s to %s, identifier:\n%s", peer, aet, identifier)
    calling = str(getattr(event.assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
    profile = config.profiles.for_calling(calling)
    expand = (
        config.expand_empty_sps if profile.expand_empty_sps is None else profile.expand_empty_sps
    )
    try:
        query = compile_query(
            identifier,
            pn_fold=config.pn_case_insensitive,
            expand_empty_sps=expand,
            max_value_length=config.max_value_length,
            matching=profile.matching,
        )
        query, narrowed = narrow(
            query,
            station=calling if profile.station_filter else None,
            dates=profile.dates(),
        )
    except QueryError as exc:
        if config.request_file_path is not None:
            _capture(event.assoc, config, identifier, aet, peer, profile_notes(profile))
        # the message names the attribute and the rule it breaks, never the value
        if not config.fail_invalid_query:
            LOGGER.warning(
                "C-FIND from %s: invalid query, %s: %s; no matches (--no-fail)",
                peer,
                _offending(exc),
                _rule(exc),
            )
            yield int(Status.SUCCESS), None
            return
        LOGGER.warning(
            "C-FIND from %s: invalid query, %s: %s; status 0x%04X",
            peer,
            _offending(exc),
            _rule(exc),
            exc.status,
        )
        yield failure(exc.status, exc.message, exc.tags), None
        return
    if narrowed:
        LOGGER.debug("C-FIND from %s: profile %s added %s", peer, profile.name, "; ".join(narrowed))
    if query.return_only:  # keywords only, never their values (patient data)
        LOGGER.debug(
            "C-FIND from %s: return keys only (not matched, PS3.4 K.2.2.1.1.2): %s",
            peer,
            ", ".join(describe_tag(key.tag) for key in query.return_only),
        )
    if config.request_file_path is not None:
        _capture(event.assoc, config, identifier, aet, peer, profile_notes(profile, narrowed))
    policy = profile.charset_policy or config.charset_policy
    omit_empty = profile.omit_empty_optional
    if not store.ready.wait(INDEX_WAIT_SECONDS):
        LOGGER.warning("C-FIND from %s: the database is still being indexed", peer)
        yield failure(Status.OUT_OF_RESOURCES, "still indexing the worklist database"), None
        return
    if mpps is not None and not mpps.wait_loaded(INDEX_WAIT_SECONDS):  # the statuses it reports
        LOGGER.warning("C-FIND from %s: the MPPS instances are still being read", peer)
        yield failure(Status.OUT_OF_RESOURCES, "still reading the MPPS instances"), None
        return
    folder = resolve_folder(store, config, aet)
    if folder is None:
        LOGGER.warning("C-FIND from %s: the folder of %r is gone", peer, aet)
        yield failure(Status.UNABLE_TO_PROCESS, f"no worklist folder for {aet}"), None
        return
    build = build_encoded if encode.installed() else build_answer
    # answers go straight to the socket where possible; pynetdicom sends the final status
    # (with --sleep-during, each answer is yielded, so it leaves before the next sleep)
    streamed = build is build_encoded and not config.sleep_during_find
    stream = encode.answer_stream(event) if streamed else None
    hidden = config.hide_statuses if profile.hide_statuses is None else profile.hide_statuses
    view = StatusView(
        mpps.steps if mpps is not None else NO_STEPS,
        frozenset() if asks_for_status(query) else hidden,
    )
    seen = None if view.changes_nothing else view.seen
    past_retention = config.retention.hider(datetime.date.today())  # --retention-days
    count = 0
    for candidate in folder.lookup.candidates(query):
        if past_retention is not None and past_retention(candidate):
            continue
        entry = candidate if seen is None else seen(candidate)
        if entry is None or not query.matches(entry):
            continue
        if count % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1:
            _let_the_peer_speak(event.assoc)
        if event.is_cancelled:
            _log_query(
                event,
                peer,
                aet,
                count,
                started,
                Status.CANCEL,
                ": cancelled after %d answers",
                count,
                profile=profile,
            )
            yield int(Status.CANCEL), None
            return
        if config.max_answers and count >= config.max_answers:
            _log_query(
                event,
                peer,
                aet,
                count,
                started,
                Status.OUT_OF_RESOURCES,
                ": more than %d matches, stopped (--max-answers); status 0xA700",
                count,
                level=logging.WARNING,
                profile=profile,
            )
            yield (
                failure(
                    Status.OUT_OF_RESOURCES,
                    f"more than {count} matches (--max-answers): narrow the query",
                ),
                None,
            )
            return
        try:
            answer = build(query, entry, policy, omit_empty)
        except Exception:
            LOGGER.exception("C-FIND from %s: cannot build an answer from %s", peer, entry.path)
            yield failure(Status.UNABLE_TO_PROCESS, "cannot build an answer"), None
            return
        count += 1
        if config.compression_level != DEFAULT_DEFLATE_LEVEL and isinstance(answer, EncodedAnswer):
            answer.set_deflate_level(config.compression_level)  # +cl, with +xd only
        if stream is None:
            yield int(Status.PENDING), answer
        elif not stream.send(answer) or not event.assoc.is_established:  # type: ignore[arg-type]
            LOGGER.info("C-FIND from %s to %s: peer gone after %d answers", peer, aet, count)
            return
    _log_query(
        event,
        peer,
        aet,
        count,
        started,
        Status.SUCCESS,
        ": %d answers in %.1f ms",
        count,
        (time.perf_counter() - started) * 1000,
        profile=profile,
    )
    yield int(Status.SUCCESS), None
