"""Log lines an administrator can trust: one line per record, and no flood.

What reaches the log comes partly from peers (calling AE titles, file names a RIS chose,
pynetdicom's messages about what a peer sent). :class:`OneLine` escapes control characters in
every message at INFO and above, so a calling AE title with a newline cannot forge a log line.
:class:`RateLimit` lets a burst of each kind of warning through and then counts the rest, so
one hostile association request (1.8 MB of bad items once gave 66,000 WARNING lines) costs a
handful of lines. ``wlmserver`` installs both on its log handler (:func:`install`); an
application embedding :class:`~wlmserver.WorklistServer` can install them on its own.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    r"""Write control characters as escapes, so that a text stays on one line.

    Examples
    --------
    >>> escape_controls("EVIL\nFAKE LINE\x1b[31m")
    'EVIL\\x0aFAKE LINE\\x1b[31m'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class OneLine(logging.Filter):
    """Escape control characters in each message at INFO and above (debug output, which may
    dump whole datasets over several lines, is left as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            message = record.getMessage()
            escaped = escape_controls(message)
            if escaped != message:
                record.msg, record.args = escaped, None
        return True


#: What varies between records of one kind whose message came formatted (an f-string, as
#: pynetdicom's and pydicom's are): quoted values and numbers.
_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def kind_of(record: logging.LogRecord) -> str:
    """The kind of a record, for :class:`RateLimit`: its message template; for a message that
    came formatted already (no arguments), the message with its quoted values and numbers
    left out, so that 2,300 lines "Non-conformant 'Transfer Syntax Name' value '1.2.0N'"
    from one association request are one kind, not 2,300.

    Examples
    --------
    >>> def record(msg, args=None):
    ...     return logging.LogRecord("x", logging.WARNING, "", 0, msg, args, None)
    >>> kind_of(record("bad '1.2.07' in item 7"))
    'bad … in item …'
    >>> kind_of(record("file %s: %d lines", ("a", 1)))
    'file %s: %d lines'
    """
    template = str(record.msg)
    return template if record.args else _VALUES.sub("…", template)


class RateLimit(logging.Filter):
    """Let at most ``burst`` warnings of one kind (logger, level and message template, see
    :func:`kind_of`) through per ``period`` seconds; the next one let through says how many
    were left out.

    Parameters
    ----------
    burst : int
        Records of one kind let through per period.
    period : float
        Seconds.
    """

    _MAX_KINDS = 1000

    def __init__(self, burst: int = 20, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # [start, passed, left out]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, kind_of(record))
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(key)
            if state is None:
                if len(self._kinds) >= self._MAX_KINDS:
                    self._kinds.clear()
                state = self._kinds[key] = [now, 0, 0]
            left_out = 0
            if now - state[0] >= self.period:
                left_out = int(state[2])
                state[:] = [now, 0, 0]
            state[1] += 1
            if state[1] > self.burst:
                state[2] += 1
                return False
        if left_out:
            record.msg = (
                f"{record.getMessage()} ({left_out} more like this were not logged in the "
                f"last {self.period:.0f} s)"
            )
            record.args = None
        return True


def install(handler: logging.Handler, *, burst: int = 20, period: float = 60.0) -> None:
    """Put :class:`RateLimit` and :class:`OneLine` on a log handler (each once: a handler
    that has one already, from a logging configuration file say, keeps it)."""
    if not any(isinstance(f, RateLimit) for f in handler.filters):
        handler.addFilter(RateLimit(burst, period))
    if not any(isinstance(f, OneLine) for f in handler.filters):
        handler.addFilter(OneLine())


def iso_time(created: float) -> str:
    """A record's time as ISO 8601 with milliseconds and the local UTC offset, so that lines
    from hosts in different time zones (or either side of a DST change) sort and compare.

    Examples
    --------
    >>> iso_time(0.5)[19:23], len(iso_time(0.5)), iso_time(0.5)[23] in "+-"
    ('.500', 29, True)
    """
    local = datetime.datetime.fromtimestamp(created).astimezone()
    return local.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, and the
    structured fields a record carries (``extra={"fields": {...}}``: the per-query and
    per-association lines have calling and called AE title, peer, duration, outcome).

    Examples
    --------
    >>> record = logging.LogRecord("x", logging.INFO, "", 0, "a\\nb", None, None)
    >>> record.fields = {"answers": 2}
    >>> json.loads(JsonFormatter().format(record))["answers"]
    2
    """

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
