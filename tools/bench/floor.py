"""The floor: a plain pynetdicom SCP that answers every C-FIND with answers kept in memory,
run in its own process (``benchmark.py --floor-server PORT ANSWERS``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leanfind import MWL_FIND
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from .client import nodelay

CANCEL = 0xFE00


def serve_floor(port: int, answers_path: Path, lifetime: float) -> int:
    """Run the floor SCP: answer every C-FIND with the answers in ``answers_path``.

    Parameters
    ----------
    port : int
        Port on 127.0.0.1.
    answers_path : Path
        A JSON list of answer identifiers (DICOM JSON).
    lifetime : float
        Exit after this many seconds at most.

    Returns
    -------
    int
        The exit status.
    """
    answers = [Dataset.from_json(item) for item in json.loads(answers_path.read_text())]

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        _ = event.identifier  # decode the query, as any server must
        for answer in answers:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield 0xFF00, answer

    ae: Any = AE(ae_title="FLOOR")
    ae.add_supported_context(
        MWL_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"]
    )
    ae.maximum_associations = 50
    ae.maximum_pdu_size = 16384
    ae.network_timeout = 60
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_CONN_OPEN, nodelay)],
    )
    print(f"floor on port {port} with {len(answers)} answers", flush=True)
    try:
        time.sleep(lifetime)
    finally:
        server.shutdown()
    return 0
