"""``nnprobe.aio.SequenceClient.job(job_id)``: the asyncio twin of ``nnprobe.sequence.job_handle.JobHandle``
(the same progress bar and notebook curves, over ``await``)."""

from __future__ import annotations

import html
import time
from typing import Any

from nnprobe.progress_bar import ProgressBar
from nnprobe.sequence.job_handle import CURVE_INTERVAL, _curve_display
from nnprobe.sequence.jobs import TERMINAL_STATES, TrainingJob


class AsyncJobHandle:
    """A training job by id, on the server of an ``nnprobe.aio.SequenceClient``; no RPC until a method is
    awaited. The methods are those of ``JobHandle``, as coroutines."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    async def status(self) -> TrainingJob:
        """The job now (``get_job``). Raises ``nnprobe.NotFound`` for an unknown id."""
        return await self.client.get_job(self.job_id)

    async def watch(
        self, *, progress: bool = True, curves: bool = True, timeout: float | None = None
    ) -> TrainingJob:
        """Follow the job until it stops: a bar of steps from where it is now (``progress=False``: none) and,
        in a notebook, its curves redrawn after each evaluation (``curves=False``: none). Returns the job
        with its events and curves. Raises ``nnprobe.NotFound`` for an unknown id,
        ``nnprobe.DeadlineExceeded`` after ``timeout`` seconds."""
        job = await self.status()
        display = _curve_display() if curves and progress else None
        last_drawn = 0.0
        with ProgressBar(
            progress and job.state not in TERMINAL_STATES,
            description=f"job {job.name or self.job_id[:8]}",
            unit="steps",
            total=job.total_steps,
            initial=job.step,
        ) as bar:
            events = self.client.watch_job(self.job_id, after_sequence=job.last_sequence, timeout=timeout)
            async for event in events:
                if event.step or event.total_steps:
                    bar.update(event.step, event.total_steps, f"loss {event.loss:.3f}" if event.loss else "")
                due = event.kind == "evaluation" and time.monotonic() - last_drawn >= CURVE_INTERVAL
                if display is not None and due:
                    display.update(await self.client.get_job(self.job_id, plot=True))
                    last_drawn = time.monotonic()
        return await self.client.get_job(self.job_id, history=True, plot=True)

    async def result(self, *, timeout: float | None = None) -> TrainingJob:
        """Wait, silently, until the job stops; return it with its events and curves."""
        return await self.watch(progress=False, timeout=timeout)

    async def cancel(self) -> TrainingJob:
        """Cancel the job (``cancel_job``)."""
        return await self.client.cancel_job(self.job_id)

    async def resume(self) -> TrainingJob:
        """Resume an interrupted or cancelled job (``resume_job``)."""
        return await self.client.resume_job(self.job_id)

    def __repr__(self) -> str:
        return f"AsyncJobHandle(job_id={self.job_id!r})"

    def _repr_html_(self) -> str:
        return f"<code>AsyncJobHandle(job_id={html.escape(repr(self.job_id))})</code>"
