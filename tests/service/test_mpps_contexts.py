"""N-CREATE and N-SET only on an MPPS presentation context (issue 20, finding 6).

pynetdicom chooses the service by the request's SOP Class UID, whatever the presentation
context it came on: an N-CREATE sent on the worklist's C-FIND context was answered 0x0000 and
stored. pynetdicom's ``meta_uid`` argument sends a request on the context of another abstract
syntax, as such a peer does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import StartServer, make_final, make_mpps
from pynetdicom import AE
from pynetdicom.association import Association

from wlmserver.service.server import MODALITY_PERFORMED_PROCEDURE_STEP, MODALITY_WORKLIST_FIND

UID = "1.2.826.0.1.3680043.10.9999.61"
UNRECOGNIZED_OPERATION = 0x0211


@contextmanager
def both_contexts(port: int) -> Iterator[Association]:
    """An association with the worklist's C-FIND context and an MPPS one."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", port, ae_title="WLM")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def test_n_create_on_the_find_context_is_refused_and_nothing_stored(
    start_server: StartServer, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    with caplog.at_level(logging.WARNING, "wlmserver"), both_contexts(server.port) as assoc:
        status, _ = assoc.send_n_create(
            make_mpps(), MODALITY_PERFORMED_PROCEDURE_STEP, UID, meta_uid=MODALITY_WORKLIST_FIND
        )
        assert status is not None
        assert int(status.Status) == UNRECOGNIZED_OPERATION
        assert "MPPS" in status.ErrorComment and len(status.ErrorComment) <= 64
        assert server.mpps.uids() == []
        assert not (db / ".mpps").exists() or not list((db / ".mpps").glob("*.dcm"))
        # the same request on the MPPS context is served, on the same association
        status, _ = assoc.send_n_create(make_mpps(), MODALITY_PERFORMED_PROCEDURE_STEP, UID)
        assert status is not None and int(status.Status) == 0x0000
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "0x0211" in line and UID in line


def test_n_set_on_the_find_context_is_refused_and_nothing_changed(
    start_server: StartServer,
) -> None:
    server = start_server()
    with both_contexts(server.port) as assoc:
        status, _ = assoc.send_n_create(make_mpps(), MODALITY_PERFORMED_PROCEDURE_STEP, UID)
        assert status is not None and int(status.Status) == 0x0000
        before = server.mpps.get(UID)
        status, _ = assoc.send_n_set(
            make_final(), MODALITY_PERFORMED_PROCEDURE_STEP, UID, meta_uid=MODALITY_WORKLIST_FIND
        )
        assert status is not None
        assert int(status.Status) == UNRECOGNIZED_OPERATION
        assert server.mpps.get(UID) == before  # still IN PROGRESS
        status, _ = assoc.send_n_set(make_final(), MODALITY_PERFORMED_PROCEDURE_STEP, UID)
        assert status is not None and int(status.Status) == 0x0000
