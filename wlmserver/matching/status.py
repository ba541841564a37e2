"""C-FIND status codes of the Modality Worklist service (PS3.4 K.4.1.1.4, PS3.7 C.4.1)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """The statuses wlmserver answers a C-FIND with."""

    SUCCESS = 0x0000
    """All matches sent."""
    PENDING = 0xFF00
    """One match, more may follow."""
    CANCEL = 0xFE00
    """Matching terminated by a C-CANCEL."""
    OUT_OF_RESOURCES = 0xA700
    """Refused: out of resources."""
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """Failed: the identifier is not a valid worklist query."""
    UNABLE_TO_PROCESS = 0xC000
    """Failed: the identifier could not be processed (undecodable)."""
