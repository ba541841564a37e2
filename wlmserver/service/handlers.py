"""Thin pynetdicom glue: accept or refuse an association, answer C-ECHO and C-FIND.

Handlers get their collaborators (the store and the config) as bound arguments, never globals,
and never read the disk while answering a C-FIND: they match against the store's in-memory
snapshot of the called AE title's folder.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from wlmserver.config import Config
from wlmserver.matching.answers import build_answer, build_encoded
from wlmserver.matching.keys import describe_tag
from wlmserver.matching.query import QueryError, compile_query, fit_comment
from wlmserver.matching.status import Status
from wlmserver.service import capture
from wlmserver.service import fastpath as encode
from wlmserver.store.index import FolderSnapshot, WorklistStore, is_safe_ae_title

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected permanent, by the service user, "called AE title not recognized"
_REJECT_CALLED_AET = (0x01, 0x01, 0x07)

FindResponse = tuple[int | Dataset, Dataset | None]


def called_ae_title(assoc: Any) -> str:
    """The AE title the requestor called, without padding."""
    return str(assoc.requestor.primitive.called_ae_title).strip()


def _peer(assoc: Any) -> str:
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


def handle_requested(event: Any, store: WorklistStore, config: Config) -> None:
    """EVT_REQUESTED: refuse an association whose called AE title has no folder."""
    aet = called_ae_title(event.assoc)
    if not is_served(store, config, aet):
        LOGGER.info(
            "association from %s rejected: called AE title %r not recognized (no folder %s)",
            _peer(event.assoc),
            aet,
            store.root / aet if is_safe_ae_title(aet) else "(unsafe title)",
        )
        event.assoc.acse.send_reject(*_REJECT_CALLED_AET)
        event.assoc.kill()  # as pynetdicom's own rejections do: lets the RJ PDU go out first


def handle_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm, which otherwise stalls each exchange."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_echo(event: Any) -> int:
    """EVT_C_ECHO: Verification always succeeds."""
    LOGGER.debug("C-ECHO from %s", _peer(event.assoc))
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


def _capture(assoc: Any, config: Config, identifier: Dataset, aet: str, peer: str) -> None:
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
        )
    except (OSError, ValueError, TypeError) as exc:
        LOGGER.warning("C-FIND from %s: cannot write the request file: %s", peer, exc)
        return
    LOGGER.debug("C-FIND from %s: request written to %s", peer, path)  # #p: patient data


def handle_find(event: Any, store: WorklistStore, config: Config) -> Iterator[FindResponse]:
    """EVT_C_FIND: one Pending answer per matching scheduled procedure step, then Success.

    Invalid identifiers get a failure status naming the offending element; a C-CANCEL between
    answers ends the operation with Cancel.
    """
    started = time.perf_counter()
    aet = called_ae_title(event.assoc)
    peer = _peer(event.assoc)
    try:
        identifier = event.identifier
    except Exception as exc:  # pynetdicom decodes lazily and may fail here
        LOGGER.warning("C-FIND from %s: cannot decode the identifier: %s", peer, exc)
        yield failure(Status.UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}"), None
        return
    LOGGER.debug("C-FIND from %s to %s, identifier:\n%s", peer, aet, identifier)
    if config.request_file_path is not None:
        _capture(event.assoc, config, identifier, aet, peer)
    try:
        query = compile_query(
            identifier,
            pn_fold=config.pn_case_insensitive,
            expand_empty_sps=config.expand_empty_sps,
        )
    except QueryError as exc:
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
    if not store.ready.wait(INDEX_WAIT_SECONDS):
        LOGGER.warning("C-FIND from %s: the database is still being indexed", peer)
        yield failure(Status.OUT_OF_RESOURCES, "still indexing the worklist database"), None
        return
    folder = resolve_folder(store, config, aet)
    if folder is None:
        LOGGER.warning("C-FIND from %s: the folder of %r is gone", peer, aet)
        yield failure(Status.UNABLE_TO_PROCESS, f"no worklist folder for {aet}"), None
        return
    build = build_encoded if encode.installed() else build_answer
    # answers go straight to the socket where possible; pynetdicom sends the final status
    stream = encode.answer_stream(event) if build is build_encoded else None
    count = 0
    for entry in folder.lookup.candidates(query):
        if not query.matches(entry):
            continue
        if count % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1:
            _let_the_peer_speak(event.assoc)
        if event.is_cancelled:
            LOGGER.info("C-FIND from %s to %s: cancelled after %d answers", peer, aet, count)
            yield int(Status.CANCEL), None
            return
        try:
            answer = build(query, entry, config.charset_policy)
        except Exception:
            LOGGER.exception("C-FIND from %s: cannot build an answer from %s", peer, entry.path)
            yield failure(Status.UNABLE_TO_PROCESS, "cannot build an answer"), None
            return
        count += 1
        if stream is None:
            yield int(Status.PENDING), answer
        elif not stream.send(answer) or not event.assoc.is_established:  # type: ignore[arg-type]
            LOGGER.info("C-FIND from %s to %s: peer gone after %d answers", peer, aet, count)
            return
    LOGGER.info(
        "C-FIND from %s to %s: %d answers in %.1f ms",
        peer,
        aet,
        count,
        (time.perf_counter() - started) * 1000,
    )
    yield int(Status.SUCCESS), None
