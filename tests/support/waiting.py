"""Waiting on server-side evidence: request log lines, work-loop stop messages, and the progress a stop
message reports. Each wait has a hang guard, never a pass/fail threshold."""

from __future__ import annotations

import logging
import re
import time

#: Hang guard for waiting on server-side evidence; never a pass/fail threshold.
WAIT_SECONDS = 120.0


def wait_for(caplog, pattern: str) -> logging.LogRecord:
    """The first request log record matching ``pattern`` (waits for the server to write it)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if record.name == "nnprobe.requests" and re.search(pattern, record.getMessage()):
                return record
        time.sleep(0.02)
    raise AssertionError(f"no log line matching {pattern!r}:\n{caplog.text}")


def wait_for_stops(stops: list[str], pattern: str) -> str:
    """The first stop message matching ``pattern``: a call's log line comes when its handler ends, and its
    compute thread stops at the next check after that. Work of other tests' servers that is still winding
    down may also stop meanwhile; the pattern (the request's own sizes) tells this call's apart."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        mine = [message for message in list(stops) if re.search(pattern, message)]
        if mine:
            return mine[0]
        assert time.monotonic() < deadline, f"no work loop stopped matching {pattern!r}: {stops}"
        time.sleep(0.02)


def progress(message: str) -> tuple[int, int]:
    """(done, total) from a ``Cancelled`` message such as "stopped after 4 of 64 units"."""
    match = re.search(r"(\d+) (?:of|Jacobians of) (\d+)", message)
    assert match, message
    return int(match.group(1)), int(match.group(2))
