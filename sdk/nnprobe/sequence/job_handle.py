"""``SequenceClient.job(job_id)``: a handle on a training job that outlives the kernel that started it.

A job lives on the server (in its job store), so after a kernel restart ``client.job(job_id)`` finds it
again: ``watch()`` shows a progress bar from the step the job has reached to its end (and, in a notebook,
its loss/perplexity curves, redrawn after each evaluation), ``result()`` waits silently; both return the
job with its event history and curves.
"""

from __future__ import annotations

import html
import importlib.util
import os
import time
from typing import Any

from nnprobe.progress_bar import ProgressBar
from nnprobe.sequence.jobs import TERMINAL_STATES, TrainingJob
from nnprobe.sequence.training_logs import TensorBoardLogs

#: Seconds between two redraws of the curves while watching (each is a GetJob with a plot).
CURVE_INTERVAL = 5.0


def _curve_display() -> Any | None:
    """An updatable notebook display (IPython's), or None outside a notebook kernel."""
    if importlib.util.find_spec("IPython") is None:
        return None
    from IPython import get_ipython
    from IPython.display import HTML, display

    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return None
    return display(HTML(""), display_id=True)


class JobHandle:
    """A training job by id, on the server of ``client``; no RPC until a method is called."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def status(self) -> TrainingJob:
        """The job now (``get_job``). Raises ``NnprobeError`` NOT_FOUND for an unknown id."""
        return self.client.get_job(self.job_id)

    def watch(
        self, *, progress: bool = True, curves: bool = True, timeout: float | None = None
    ) -> TrainingJob:
        """Follow the job until it stops: a bar of steps from where it is now (``progress=False``: none) and,
        in a notebook, its curves redrawn after each evaluation (``curves=False``: none). Returns the job
        with its events and curves (``get_job(history=True, plot=True)``).

        Raises ``NnprobeError``: NOT_FOUND for an unknown id, DEADLINE_EXCEEDED after ``timeout`` seconds.
        """
        job = self.status()
        display = _curve_display() if curves and progress else None
        last_drawn = 0.0
        description = f"job {job.name or self.job_id[:8]}"
        with ProgressBar(
            progress and job.state not in TERMINAL_STATES,
            description=description,
            unit="steps",
            total=job.total_steps,
            initial=job.step,
        ) as bar:
            for event in self.client.watch_job(
                self.job_id, after_sequence=job.last_sequence, timeout=timeout
            ):
                if event.step or event.total_steps:
                    bar.update(event.step, event.total_steps, f"loss {event.loss:.3f}" if event.loss else "")
                due = event.kind == "evaluation" and time.monotonic() - last_drawn >= CURVE_INTERVAL
                if display is not None and due:
                    display.update(self.client.get_job(self.job_id, plot=True))
                    last_drawn = time.monotonic()
        return self.client.get_job(self.job_id, history=True, plot=True)

    def result(self, *, timeout: float | None = None) -> TrainingJob:
        """Wait, silently, until the job stops; return it with its events and curves. Same errors as
        ``watch``."""
        return self.watch(progress=False, timeout=timeout)

    def cancel(self) -> TrainingJob:
        """Cancel the job (``cancel_job``)."""
        return self.client.cancel_job(self.job_id)

    def resume(self) -> TrainingJob:
        """Resume an interrupted or cancelled job (``resume_job``)."""
        return self.client.resume_job(self.job_id)

    def tensorboard(self, out_dir: str | os.PathLike[str]) -> TensorBoardLogs:
        """Save the job's TensorBoard event files into ``out_dir`` for ``tensorboard --logdir out_dir``
        (``download_tensorboard``). Raises ``NnprobeError``: NOT_FOUND for an unknown id."""
        return self.client.download_tensorboard(self.job_id, out_dir)

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r})"

    def _repr_html_(self) -> str:
        return f"<code>JobHandle(job_id={html.escape(repr(self.job_id))})</code>"
