"""Streamed calls: progress events, then one final result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nnprobe.errors import NnprobeError

#: ``on_progress(done, total, message)`` for streamed calls.
ProgressCallback = Callable[[int, int, str], None]


def final_result(events: Iterator[Any], on_progress: ProgressCallback | None) -> Any:
    """The ``result`` of a stream of ``progress``/``result`` events; ``on_progress`` sees each progress.

    Raises ``NnprobeError(UNKNOWN)`` when the stream ends without a result.
    """
    for event in events:
        if event.HasField("progress"):
            if on_progress is not None:
                on_progress(event.progress.done, event.progress.total, event.progress.message)
        elif event.HasField("result"):
            return event.result
    raise NnprobeError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")
