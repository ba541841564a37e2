"""Log lines: control characters escaped, repeated warnings rate-limited."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from wlmserver import logs


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logs.install(handler, burst=3, period=3600)
    logger = logging.getLogger("wlmserver.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_a_calling_ae_title_cannot_forge_a_log_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    logger.info("association from %s rejected", "EVIL\n2026-12-02 INFO forged\r\x1b[2J")
    lines = stream.getvalue().splitlines()
    assert lines == ["INFO association from EVIL\\x0a2026-12-02 INFO forged\\x0d\\x1b[2J rejected"]


def test_repeated_warnings_are_counted_not_repeated(
    logged: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = logged
    for n in range(1000):
        logger.warning("bad item %d in an association request", n)
    logger.warning("another kind")
    assert len(stream.getvalue().splitlines()) == 4  # a burst of 3, then the other kind
    # a period later, the next one says how many were left out
    clock = [logs.time.monotonic() + 7200]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    logger.warning("bad item %d in an association request", 1000)
    last = stream.getvalue().splitlines()[-1]
    assert last == (
        "WARNING bad item 1000 in an association request (997 more like this were not logged "
        "in the last 3600 s)"
    )


def test_info_is_not_rate_limited(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    for n in range(10):
        logger.info("C-FIND %d", n)
    assert len(stream.getvalue().splitlines()) == 10


def test_json_lines_carry_milliseconds_and_the_time_zone() -> None:
    """A log shipper merges lines of several hosts: each time says its UTC offset and its
    milliseconds (issue 19)."""
    import datetime
    import json

    record = logging.LogRecord("wlmserver", logging.INFO, "", 0, "hello", None, None)
    record.created = 1700000000.25
    stamp = json.loads(logs.JsonFormatter().format(record))["time"]
    parsed = datetime.datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None and stamp[19:23] == ".250"
    assert parsed.timestamp() == 1700000000.25
