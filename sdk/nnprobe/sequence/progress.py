"""Streamed calls of SequenceService: progress events, then one final result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from nnprobe.errors import Unknown
from nnprobe.progress import Progress, ProgressCallback


def progress_of(event: Any, unit: str) -> Progress | None:
    """The ``Progress`` of a ``progress`` event of a stream (None for its ``result``)."""
    if not event.HasField("progress"):
        return None
    p = event.progress
    return Progress(done=p.done, total=p.total, unit=unit, message=p.message)


def final_result(events: Iterator[Any], on_progress: ProgressCallback | None, unit: str) -> Any:
    """The ``result`` of a stream of ``progress``/``result`` events; ``on_progress`` sees each progress,
    counted in ``unit``.

    Raises ``nnprobe.Unknown`` when the stream ends without a result.
    """
    for event in events:
        if event.HasField("result"):
            return event.result
        progress = progress_of(event, unit)
        if progress is not None and on_progress is not None:
            on_progress(progress)
    raise Unknown("the stream ended without a result")


async def final_result_async(
    events: AsyncIterator[Any], on_progress: ProgressCallback | None, unit: str
) -> Any:
    """``final_result`` of an asyncio stream."""
    async for event in events:
        if event.HasField("result"):
            return event.result
        progress = progress_of(event, unit)
        if progress is not None and on_progress is not None:
            on_progress(progress)
    raise Unknown("the stream ended without a result")
