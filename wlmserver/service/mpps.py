"""Thin pynetdicom glue for Modality Performed Procedure Step: N-CREATE and N-SET.

The association policy is the C-FIND one (same port, AE titles, allow-lists and TLS): these
handlers only run on an association :func:`~wlmserver.service.handlers.handle_requested`
accepted. Each turns the request into a call of :class:`~wlmserver.store.mpps.MppsStore`
(which checks the PS3.4 F.7 rules, writes the file and updates the link to the steps) and the
outcome into a response: success, or a failure status with an ErrorComment (0000,0902) naming
the attribute and the rule, Error ID (0000,0903) where PS3.4 Table F.7.2-2 gives one, and, on
an N-SET, the Attribute Identifier List (0000,1005) (pynetdicom sends no such list in an
N-CREATE response, PS3.7 10.3.5).

With ``--mpps-forward``, the store queues each request for the RIS in the same durable step
as the instance (see :mod:`wlmserver.store.mpps`), before the response is sent, so a modality's
next request is always queued after it; Success means both are on disk, and a request that
cannot be queued (the disk or the queue full) is refused with 0x0213 like one that cannot be
stored. The handler then wakes the sender (:meth:`Forwarder.wake
<wlmserver.service.forwarder.Forwarder.wake>`).

A data set longer than the store's :attr:`~wlmserver.store.mpps.MppsLimits.request` bytes
(``--max-mpps-size``) is refused with 0x0213 Resource limitation before it is decoded.

Logging: one INFO line per request with the peer, the MPPS SOP Instance UID, its status and
how many steps it performs (an unscheduled MPPS says so); no patient data and no order
identifiers (accession number, Requested Procedure and Scheduled Procedure Step IDs, Study
Instance UID): those only at DEBUG. A refusal is one WARNING (a limit: its own kind of line,
so the log's rate limit counts it apart), or one ERROR when the server itself failed (its
disk).

Requests are served only on a presentation context negotiated for MPPS
(:func:`wrong_context`).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from wlmserver.matching.mpps import (
    MPPS_SOP_CLASS,
    MppsError,
    MppsStatus,
    Performed,
)
from wlmserver.service.forwarder import Forwarder
from wlmserver.service.handlers import peer_of
from wlmserver.store.mpps import MppsStore

LOGGER = logging.getLogger(__name__)

MppsResponse = tuple[int | Dataset, Dataset | None]


def failure(exc: MppsError, n_set: bool = False) -> Dataset:
    """The status dataset of a refused N-CREATE or N-SET.

    Examples
    --------
    >>> from wlmserver.matching.mpps import NO_LONGER_UPDATABLE, NO_LONGER_UPDATABLE_ERROR_ID
    >>> ds = failure(MppsError(MppsStatus.PROCESSING_FAILURE, NO_LONGER_UPDATABLE,
    ...                        error_id=NO_LONGER_UPDATABLE_ERROR_ID), n_set=True)
    >>> hex(ds.Status), ds.ErrorComment, hex(ds.ErrorID)
    ('0x110', 'Performed Procedure Step Object may no longer be updated', '0xa710')
    """
    ds = Dataset()
    ds.Status = int(exc.status)
    ds.ErrorComment = exc.comment
    if exc.error_id is not None:
        ds.ErrorID = exc.error_id
    if n_set and exc.tags:
        ds.AttributeIdentifierList = list(exc.tags)
    return ds


def describe(performed: Performed | None) -> str:
    """An MPPS for the INFO log: its status and how many steps it performs, or that it is
    unscheduled. No patient data, and no identifier of the order either: the accession number
    identifies a patient's order, and the Requested Procedure and Scheduled Procedure Step IDs
    are often the accession number itself (``wlmserver create`` makes the first one so);
    those are :func:`identifiers`, logged at DEBUG only.

    Examples
    --------
    >>> from wlmserver.matching.mpps import PpsStatus, StepKey
    >>> describe(Performed("1.2.3", PpsStatus.IN_PROGRESS, (StepKey("1.4", "RP1", "S1", "A7"),)))
    'IN PROGRESS, 1 step'
    >>> describe(Performed("1.2.3", PpsStatus.IN_PROGRESS, ()))
    'IN PROGRESS, unscheduled (no scheduled step named)'
    """
    if performed is None:
        return "?"
    if performed.unscheduled:
        return f"{performed.status.value}, unscheduled (no scheduled step named)"
    count = len(performed.steps)
    return f"{performed.status.value}, {count} step{'s' if count > 1 else ''}"


def identifiers(performed: Performed | None) -> str:
    """The steps an MPPS performs, by their identifiers (``RP/SPS``, accession number, study),
    for the DEBUG log only (see :func:`describe`).

    Examples
    --------
    >>> from wlmserver.matching.mpps import PpsStatus, StepKey
    >>> identifiers(Performed("1.2.3", PpsStatus.IN_PROGRESS, (StepKey("1.4", "RP1", "S1", "A7"),)))
    'RP1/S1 (accession A7, study 1.4)'
    """
    if performed is None or performed.unscheduled:
        return "-"
    return ", ".join(
        f"{s.requested_procedure_id or '-'}/{s.scheduled_procedure_step_id or '-'} "
        f"(accession {s.accession_number or '-'}, study {s.study_instance_uid or '-'})"
        for s in performed.steps
    )


def _wrong_class(sop_class: object) -> MppsError | None:
    if sop_class is not None and str(sop_class) != MPPS_SOP_CLASS:
        return MppsError(MppsStatus.NO_SUCH_SOP_CLASS, "SOP Class UID: only MPPS is served")
    return None


def wrong_context(event: Any, what: str) -> MppsError | None:
    """Why an N-CREATE or N-SET is refused for the presentation context it came on, or None.

    pynetdicom picks the service from the request's SOP Class UID, whatever the context: an
    N-CREATE sent on the worklist's C-FIND context reached the MPPS handler and was stored.
    Only a context negotiated for MPPS (1.2.840.10008.3.1.2.3.3) agreed on N-CREATE and
    N-SET; on another one the request is refused with Unrecognized Operation (0x0211, PS3.7
    Annex C), before its data set is decoded.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> find = SimpleNamespace(context=SimpleNamespace(abstract_syntax="1.2.840.10008.5.1.4.31"))
    >>> wrong_context(find, "N-CREATE").comment
    'presentation context: N-CREATE only on one for MPPS'
    >>> mpps = SimpleNamespace(context=SimpleNamespace(abstract_syntax=MPPS_SOP_CLASS))
    >>> wrong_context(mpps, "N-SET") is None
    True
    """
    syntax = getattr(getattr(event, "context", None), "abstract_syntax", None)
    if syntax is None or str(syntax) == MPPS_SOP_CLASS:
        return None
    return MppsError(
        MppsStatus.UNRECOGNIZED_OPERATION, f"presentation context: {what} only on one for MPPS"
    )


def handle_n_create(
    event: Any, store: MppsStore, forwarder: Forwarder | None = None
) -> MppsResponse:
    """EVT_N_CREATE: create an MPPS instance (PS3.4 F.7.2.1).

    Returns success with the Affected SOP Instance UID the SCP assigned when the request had
    none (PS3.7 10.1.5.1.4), or a failure status dataset; see
    :meth:`MppsStore.create <wlmserver.store.mpps.MppsStore.create>` for which. Once stored,
    the request is queued for ``forwarder`` (with the UID assigned, if any).
    """
    peer = peer_of(event.assoc)
    request = event.request
    given = request.AffectedSOPInstanceUID
    uid = str(given) if given else None
    try:
        refused = wrong_context(event, "N-CREATE") or _wrong_class(request.AffectedSOPClassUID)
        if refused is not None:
            raise refused
        _check_size(request, "AttributeList", "attribute list", store.limits.request)
        attributes = _decoded(event, "attribute_list", "the attribute list")
        checked = store.create(uid, attributes)
    except MppsError as exc:
        _log_refusal("N-CREATE", peer, uid, exc)
        return failure(exc), None
    except Exception:
        LOGGER.exception("MPPS N-CREATE from %s: %s failed", peer, uid or "(no UID)")
        return failure(MppsError(MppsStatus.PROCESSING_FAILURE, "internal error")), None
    created = str(checked.instance.SOPInstanceUID)
    if forwarder is not None:
        forwarder.wake()  # the store queued it with the instance
    performed = store.steps.get(created)
    LOGGER.info(
        "MPPS N-CREATE from %s: %s%s %s",
        peer,
        created,
        "" if uid else " (UID assigned)",
        describe(performed),
    )
    LOGGER.debug("MPPS N-CREATE %s performs %s", created, identifiers(performed))
    if checked.lenient:
        LOGGER.warning(
            "MPPS N-CREATE from %s: %s accepted without the Type 2 attributes %s "
            "(PS3.4 Table F.7.2-1: send them, empty when unknown)",
            peer,
            created,
            ", ".join(checked.lenient),
        )
    if uid is None:
        answer = Dataset()
        answer.AffectedSOPInstanceUID = created
        return int(MppsStatus.SUCCESS), answer
    return int(MppsStatus.SUCCESS), None


def handle_n_set(event: Any, store: MppsStore, forwarder: Forwarder | None = None) -> MppsResponse:
    """EVT_N_SET: update an MPPS instance while it is IN PROGRESS (PS3.4 F.7.2.2); see
    :meth:`MppsStore.set <wlmserver.store.mpps.MppsStore.set>` for the failures. Once stored,
    the request is queued for ``forwarder``."""
    peer = peer_of(event.assoc)
    request = event.request
    uid = str(request.RequestedSOPInstanceUID or "")
    try:
        refused = wrong_context(event, "N-SET") or _wrong_class(request.RequestedSOPClassUID)
        if refused is not None:
            raise refused
        _check_size(request, "ModificationList", "modification list", store.limits.request)
        modification = _decoded(event, "modification_list", "the modification list")
        checked = store.set(uid, modification)
    except MppsError as exc:
        _log_refusal("N-SET", peer, uid, exc)
        return failure(exc, n_set=True), None
    except Exception:
        LOGGER.exception("MPPS N-SET from %s: %s failed", peer, uid)
        return failure(MppsError(MppsStatus.PROCESSING_FAILURE, "internal error"), True), None
    if forwarder is not None:
        forwarder.wake()
    performed = store.steps.get(uid)
    LOGGER.info("MPPS N-SET from %s: %s %s", peer, uid, describe(performed))
    LOGGER.debug("MPPS N-SET %s performs %s", uid, identifiers(performed))
    if checked.lenient:
        LOGGER.warning(
            "MPPS N-SET from %s: %s accepted without the Type 2 attributes %s",
            peer,
            uid,
            ", ".join(checked.lenient),
        )
    return int(MppsStatus.SUCCESS), None


def _check_size(request: Any, name: str, what: str, limit: int) -> None:
    """Refuse a data set longer than ``limit`` bytes before it is decoded (0x0213)."""
    encoded = getattr(request, name, None)
    getvalue = getattr(encoded, "getvalue", None)
    if getvalue is None:
        return
    size = len(getvalue())
    if size > limit:
        raise MppsError(
            MppsStatus.RESOURCE_LIMITATION,
            f"{what} over {limit} bytes (--max-mpps-size)",
            detail=f"{size} bytes",
        )


def _decoded(event: Any, name: str, what: str) -> Dataset | None:
    """The request's data set (``event.attribute_list`` or ``event.modification_list``);
    pynetdicom decodes it lazily, and a failure there is a processing failure saying so."""
    try:
        return getattr(event, name)  # type: ignore[no-any-return]
    except Exception as exc:
        raise MppsError(MppsStatus.PROCESSING_FAILURE, f"cannot decode {what}") from exc


def _log_refusal(what: str, peer: str, uid: str | None, exc: MppsError) -> None:
    detail = f" ({exc.detail})" if exc.detail else ""
    if exc.internal:  # the server's own failure (its disk): an administrator must act
        LOGGER.error(
            "MPPS %s from %s: %s not stored, status 0x%04X: %s%s",
            what,
            peer,
            uid or "(no UID)",
            int(exc.status),
            exc.comment,
            detail,
        )
    elif exc.status == MppsStatus.RESOURCE_LIMITATION:  # a limit: counted apart by the rate limit
        LOGGER.warning(
            "MPPS %s from %s: %s refused at a limit, status 0x%04X: %s%s",
            what,
            peer,
            uid or "(no UID)",
            int(exc.status),
            exc.comment,
            detail,
        )
    else:
        LOGGER.warning(
            "MPPS %s from %s: %s refused, status 0x%04X: %s",
            what,
            peer,
            uid or "(no UID)",
            int(exc.status),
            exc.comment,
        )
