"""A step's status as the worklist answers it: the file's, or what the modality reported.

The ``.wl`` files belong to the RIS and are never changed; what a modality reports through
MPPS (:mod:`wlmserver.matching.mpps`) is laid over them when a query is answered: the answer's
Scheduled Procedure Step Status (0040,0020) is STARTED while the MPPS that performs the step is
IN PROGRESS, then COMPLETED or DISCONTINUED (PS3.3 C.4.10 defined terms; IHE RAD SWF). The
query matches the status so answered, and steps whose status a setting hides (by default
COMPLETED and DISCONTINUED: the worklist is the modality's list of what is still to do) are
left out, unless the query itself asks for a status (then it gets what it asked for).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wlmserver.matching.entry import Entry
from wlmserver.matching.mpps import PerformedSteps, PpsStatus, StepKey
from wlmserver.matching.query import CompiledQuery
from wlmserver.matching.record import Record

SPS_STATUS = 0x00400020
_STUDY_INSTANCE_UID = 0x0020000D
_REQUESTED_PROCEDURE_ID = 0x00401001
_SPS_ID = 0x00400009
_ACCESSION_NUMBER = 0x00080050

#: The Scheduled Procedure Step Status a performed status is answered as.
ANSWERED_AS = {
    PpsStatus.IN_PROGRESS: "STARTED",
    PpsStatus.COMPLETED: "COMPLETED",
    PpsStatus.DISCONTINUED: "DISCONTINUED",
}

#: The defined terms of Scheduled Procedure Step Status (PS3.3 C.4.10), which a setting may hide.
STEP_STATUSES = (
    "SCHEDULED",
    "ARRIVED",
    "READY",
    "STARTED",
    "DEPARTED",
    "CANCELED",
    "DISCONTINUED",
    "COMPLETED",
)

#: Hidden unless a setting says otherwise: a step done, or given up, is no longer to do.
DEFAULT_HIDDEN = frozenset({"COMPLETED", "DISCONTINUED"})


def parse_statuses(text: str) -> frozenset[str]:
    """Statuses from a setting: comma- or space-separated defined terms, any case; ``none``
    (or nothing) hides none.

    Raises
    ------
    ValueError
        A word is not a defined term (the message names it and lists them).

    Examples
    --------
    >>> sorted(parse_statuses("completed, DISCONTINUED"))
    ['COMPLETED', 'DISCONTINUED']
    >>> parse_statuses("none")
    frozenset()
    """
    words = [w.upper() for w in text.replace(",", " ").split()]
    if words in ([], ["NONE"]):
        return frozenset()
    unknown = [w for w in words if w not in STEP_STATUSES]
    if unknown:
        raise ValueError(
            f"{unknown[0]!r} is not a step status: use {', '.join(STEP_STATUSES)}, or none"
        )
    return frozenset(words)


def step_key(entry: Entry) -> StepKey:
    """What identifies an entry's step to the MPPS that perform it (PS3.4 F.7.2-1)."""
    top, sps = entry.top, entry.sps
    return StepKey(
        _first(top.text(_STUDY_INSTANCE_UID)),
        _first(top.text(_REQUESTED_PROCEDURE_ID)),
        _first(sps.text(_SPS_ID)),
        _first(top.text(_ACCESSION_NUMBER)),
    )


def _first(values: tuple[str, ...]) -> str:
    return values[0] if values else ""


def with_status(entry: Entry, status: str) -> Entry:
    """The entry with its SPS item's Scheduled Procedure Step Status set to ``status`` (a new
    entry: the index's is shared and never changed)."""
    elements = [(tag, vr, value) for tag, vr, value in entry.sps if tag != SPS_STATUS]
    elements.append((SPS_STATUS, "CS", (status,)))
    return Entry(entry.path, entry.item, entry.top, Record(elements), entry.charset, entry.order)


def asks_for_status(query: CompiledQuery) -> bool:
    """Whether a query matches on Scheduled Procedure Step Status itself (then no status is
    hidden from it: it gets the steps it asked for)."""
    return any(tag == SPS_STATUS for tag, _ in query.sps.values)


@dataclass(frozen=True)
class StatusView:
    """How one query sees steps' statuses.

    Parameters
    ----------
    performed : PerformedSteps
        What modalities reported (a snapshot taken when the query started).
    hidden : frozenset of str
        The statuses not answered (for this query: empty when it asks for a status).
    """

    performed: PerformedSteps
    hidden: frozenset[str]

    @property
    def changes_nothing(self) -> bool:
        """Whether every entry is answered as it is (no MPPS, nothing hidden)."""
        return not self.hidden and not len(self.performed)

    def reported(self, entry: Entry) -> PpsStatus | None:
        """What the newest MPPS performing the step reported, or None (no MPPS names it)."""
        return self.performed.status(step_key(entry)) if len(self.performed) else None

    def status_of(self, entry: Entry) -> str:
        """The step's status as answered: the newest MPPS's, else the file's ('' if none)."""
        performed = self.reported(entry)
        if performed is not None:
            return ANSWERED_AS[performed]
        return _first(entry.sps.text(SPS_STATUS)).upper()

    def seen(self, entry: Entry) -> Entry | None:
        """The entry as this query sees it (with the status an MPPS reported), or None if
        its status is hidden."""
        if self.changes_nothing:
            return entry
        performed = self.reported(entry)
        if performed is None:  # as the file says
            if self.hidden and _first(entry.sps.text(SPS_STATUS)).upper() in self.hidden:
                return None
            return entry
        status = ANSWERED_AS[performed]
        if status in self.hidden:
            return None
        return with_status(entry, status)

    def visible(self, entries: Iterable[Entry]) -> list[Entry]:
        """The entries this query sees, in order."""
        return [e for e in map(self.seen, entries) if e is not None]
