"""wlmscpfs's ``--sleep-before``, ``--sleep-during`` and ``--sleep-after``: C-FIND responses
delayed on purpose, to test how an SCU copes with a slow SCP (its DIMSE timeout while it
waits for responses, its ACSE timeout while it waits for the release).

Per C-FIND, as DCMTK's wlmscpfs does them (``WlmActivityManager::HandleFindSCP`` and its
``FindCallback`` in dcmwlm/libsrc/wlmactmg.cc):

- ``--sleep-before S``: S seconds before the query is matched, once;
- ``--sleep-during S``: S seconds before each response, every Pending answer and the final
  status alike;
- ``--sleep-after S``: S seconds after the final response has been sent; the association's
  next message (another request, or the A-RELEASE-RQ) is handled only then.

The sleeps run in the association's own thread: other associations are served meanwhile.
They end early when the server stops or the association ends (an A-ABORT from the peer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from wlmserver.config import Config
from wlmserver.service import fastpath
from wlmserver.service.handlers import FindResponse, handle_find
from wlmserver.store.index import WorklistStore
from wlmserver.store.mpps import MppsStore

LOGGER = logging.getLogger(__name__)

#: How often a sleep checks that its association is still established, seconds.
CHECK_EVERY = 0.05


class Pacing:
    """The sleeps of one server (see the module docstring).

    Parameters
    ----------
    before, during, after : float
        Seconds (0: no sleep).
    """

    def __init__(self, before: float = 0.0, during: float = 0.0, after: float = 0.0) -> None:
        self.before = before
        self.during = during
        self.after = after
        self._stopping = threading.Event()

    @classmethod
    def from_config(cls, config: Config) -> Pacing | None:
        """The pacing a configuration asks for, or None if it asks for no sleep."""
        seconds = (config.sleep_before_find, config.sleep_during_find, config.sleep_after_find)
        return cls(*seconds) if any(seconds) else None

    def stop(self) -> None:
        """End every sleep now, and skip those to come (the server is stopping)."""
        self._stopping.set()

    def sleep(self, assoc: Any, seconds: float) -> None:
        """Wait ``seconds``, or less if the server stops or the association ends."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.wait(min(left, CHECK_EVERY)):
                return
            if not getattr(assoc, "is_established", True):
                return

    def find(
        self, event: Any, store: WorklistStore, config: Config, mpps: MppsStore | None = None
    ) -> Iterator[FindResponse]:
        """EVT_C_FIND: :func:`~wlmserver.service.handlers.handle_find`, delayed.

        With ``--sleep-during`` the handler yields every answer to pynetdicom (it does not
        stream them in batches), so that each one leaves before the next sleep.
        """
        assoc = event.assoc
        thread = threading.get_ident()
        if self.before:
            LOGGER.debug("C-FIND: sleeping %g s before matching (--sleep-before)", self.before)
            self.sleep(assoc, self.before)
        try:
            for response in handle_find(event, store, config, mpps):
                if self.during:
                    fastpath.flush(assoc)  # what was answered so far reaches the peer first
                    self.sleep(assoc, self.during)
                yield response
        finally:
            # pynetdicom stops iterating at the final status, once it has sent it, and drops
            # this generator: that closes it here, in the association's thread, before the
            # association handles its next message. Were it ever closed in another thread
            # (collected later), no other association is made to wait.
            if self.after and threading.get_ident() == thread:
                LOGGER.debug("C-FIND: sleeping %g s after it (--sleep-after)", self.after)
                self.sleep(assoc, self.after)
