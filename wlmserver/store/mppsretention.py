"""MPPS retention runs: finished instances past retention move to ``<mpps folder>/archive/``.

Without them the MPPS folder only grows: every exam leaves an instance, and every instance is
in the index (:mod:`wlmserver.store.mpps`) for as long as it is in the folder. An instance is
of use while the step it performs may still be answered: C-FIND lays its status over the step
(:mod:`wlmserver.matching.stepstatus`). So, with ``--mpps-retention-days N`` (by default the
worklist's ``--retention-days``, whose steps scheduled more than N days ago are no longer
answered), an instance that is COMPLETED or DISCONTINUED and ended (Performed Procedure Step
End Date; else its start date) more than N days ago is **moved**, never deleted, to
``<mpps folder>/archive/<uid>.dcm`` (a name already taken gets ``.1``, ``.2`` ... : nothing is
overwritten; a hard link then an unlink, in the same file system); an instance still IN
PROGRESS, or one whose messages are still queued for the RIS, stays.

A run happens once the instances are read at start, every hour and just after local
midnight, on a thread of its own, and logs one INFO line when it moved anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import date, datetime, timedelta

from wlmserver.matching.retention import RetentionPolicy
from wlmserver.store.mpps import ARCHIVE_NAME, MppsStore

LOGGER = logging.getLogger(__name__)

#: Seconds between runs (besides the one just after local midnight).
DEFAULT_INTERVAL = 3600.0


class MppsRetentionRuns:
    """Retention runs over an :class:`MppsStore`, on a thread of its own.

    Parameters
    ----------
    store : MppsStore
        The instances.
    days : int
        Finished instances that ended more than this many days ago move to the archive.
    interval : float
        Seconds between runs.
    clock : callable, optional
        Today's date (default :meth:`datetime.date.today`), for tests.
    """

    def __init__(
        self,
        store: MppsStore,
        days: int,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], date] = date.today,
    ) -> None:
        self.store = store
        self.policy = RetentionPolicy(days)
        self.interval = interval
        self.clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="wlmserver-mpps-retention", daemon=True
        )

    def start(self) -> None:
        """Start the runs: the first once the instances are read."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the runs and join the thread (a batch of moves in progress finishes first)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self.store.wait_loaded(0.2):
            if self._stopping.is_set():
                return
        while not self._stopping.is_set():
            try:
                self.run()
            except Exception:  # the runs must outlive any surprise
                LOGGER.exception("MPPS retention: unexpected error in a run")
            now = datetime.now()
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time())
            self._stopping.wait(
                max(1.0, min(self.interval, (midnight - now).total_seconds() + 1.0))
            )

    def run(self, today: date | None = None) -> int:
        """One run; returns how many instances moved."""
        cutoff = self.policy.cutoff(today or self.clock())
        assert cutoff is not None
        moved = self.store.archive_finished(cutoff.strftime("%Y%m%d"))
        if moved:
            LOGGER.info(
                "MPPS retention: %d finished instances that ended before %s moved to %s",
                moved,
                cutoff.isoformat(),
                self.store.folder / ARCHIVE_NAME,
            )
        return moved
