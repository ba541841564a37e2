"""Retention: which scheduled procedure steps are too old to be served.

A RIS seldom deletes what it dropped: without retention, a worklist folder serves every step
it was ever given, and a modality asking for "everything for my station" gets years of them.
:class:`RetentionPolicy` says which steps are past retention, by the step's **scheduled**
date (Scheduled Procedure Step Start Date (0040,0002) of its SPS item), never by the file's
modification time: a file re-written yesterday for a step of last year is still old.

The boundary, with ``days = N`` and ``today = T``: a step scheduled on ``T - N`` (exactly ``N``
days ago) is kept; one scheduled the day before it (``N + 1`` days ago) or earlier is hidden.
A step with no start date, or one that is not a calendar date ``YYYYMMDD``, is never hidden by
retention: the policy cannot know its age, and hiding a step is worse than serving an old one.

This module knows nothing of files or networks: the C-FIND handler asks
``policy.hides(entry, today)`` of each candidate, the store moves a file to the archive folder
only when every step it serves is past retention (:mod:`wlmserver.store.retention`), and
``wlmserver check --retention-days N`` reports what a run would hide or move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from wlmserver.matching.entry import Entry

#: Scheduled Procedure Step Start Date, in the SPS item.
SPS_START_DATE = 0x00400002


def scheduled_date(entry: Entry) -> date | None:
    """The scheduled start date of a step, or None when it has none or it is not a date.

    Only the first value counts (the attribute has one, VM 1); surrounding spaces are ignored.

    Examples
    --------
    >>> from wlmserver.matching.record import Record
    >>> def step(*dates: str) -> Entry:
    ...     sps = Record([(SPS_START_DATE, "DA", dates)])
    ...     return Entry("x.wl", 0, Record([]), sps, (), ("", "x.wl", 0))
    >>> scheduled_date(step("20261122"))
    datetime.date(2026, 11, 22)
    >>> [scheduled_date(step(*v)) for v in ((), ("",), ("20261322",), ("2026-11-22",))]
    [None, None, None, None]
    """
    values = entry.sps.text(SPS_START_DATE)
    if not values:
        return None
    text = values[0].strip()
    if len(text) != 8 or not (text.isascii() and text.isdigit()):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


@dataclass(frozen=True)
class RetentionPolicy:
    """Which steps are past retention (hidden from C-FIND answers).

    Parameters
    ----------
    days : int or None
        Steps scheduled more than this many days before today are hidden (``--retention-days``;
        at least 1); None keeps every step.

    Raises
    ------
    ValueError
        ``days`` is less than 1.

    Examples
    --------
    >>> policy = RetentionPolicy(30)
    >>> policy.cutoff(date(2026, 11, 22))
    datetime.date(2026, 10, 23)
    >>> RetentionPolicy(None).active, policy.active
    (False, True)
    """

    days: int | None = None

    def __post_init__(self) -> None:
        if self.days is not None and self.days < 1:
            raise ValueError("retention days must be at least 1")

    @property
    def active(self) -> bool:
        """Whether any step can be hidden (``days`` is set)."""
        return self.days is not None

    def cutoff(self, today: date) -> date | None:
        """The oldest scheduled date kept on ``today`` (``today - days``); None: every date
        is kept."""
        return None if self.days is None else today - timedelta(days=self.days)

    def hides(self, entry: Entry, today: date) -> bool:
        """Whether a step is past retention on ``today``: scheduled before ``today - days``.

        What the C-FIND handler asks of each candidate entry (``today`` is the local date the
        query is answered on, :meth:`datetime.date.today`). Never true without ``days``, nor
        for a step without a parseable start date (:func:`scheduled_date`).

        Parameters
        ----------
        entry : Entry
            One scheduled procedure step.
        today : datetime.date
            The reference day.

        Returns
        -------
        bool
            True when the step must not be served.

        Examples
        --------
        >>> from wlmserver.matching.record import Record
        >>> def step(start: str) -> Entry:
        ...     sps = Record([(SPS_START_DATE, "DA", (start,))])
        ...     return Entry("x.wl", 0, Record([]), sps, (), (start, "x.wl", 0))
        >>> today = date(2026, 11, 22)
        >>> policy = RetentionPolicy(30)
        >>> [policy.hides(step(d), today) for d in ("20261023", "20261022", "20270101", "")]
        [False, True, False, False]
        >>> RetentionPolicy(None).hides(step("19990101"), today)
        False
        """
        past = self.hider(today)
        return past is not None and past(entry)

    def hider(self, today: date) -> Callable[[Entry], bool] | None:
        """:meth:`hides` for one day, its cutoff worked out once (what a C-FIND asks of each
        candidate); None when no step is hidden (no ``days``)."""
        cutoff = self.cutoff(today)
        if cutoff is None:
            return None

        def past(entry: Entry) -> bool:
            scheduled = scheduled_date(entry)
            return scheduled is not None and scheduled < cutoff

        return past

    def hidden(self, entries: Iterable[Entry], today: date) -> list[Entry]:
        """The entries past retention on ``today``, in their order."""
        past = self.hider(today)
        return [] if past is None else [e for e in entries if past(e)]

    def expires_file(self, entries: Iterable[Entry], today: date) -> bool:
        """Whether a whole file is past retention: it serves at least one step, and every
        step it serves is hidden (only such a file is moved to the archive folder).

        A file that serves nothing (not read, or every item rejected) has no date to judge
        by and is never past retention.

        Examples
        --------
        >>> from wlmserver.matching.record import Record
        >>> def step(start: str) -> Entry:
        ...     sps = Record([(SPS_START_DATE, "DA", (start,))])
        ...     return Entry("x.wl", 0, Record([]), sps, (), (start, "x.wl", 0))
        >>> today, policy = date(2026, 11, 22), RetentionPolicy(30)
        >>> policy.expires_file([step("20250101"), step("20250102")], today)
        True
        >>> policy.expires_file([step("20250101"), step("20261201")], today)
        False
        >>> policy.expires_file([], today)
        False
        """
        entries = list(entries)
        return bool(entries) and all(self.hides(e, today) for e in entries)
