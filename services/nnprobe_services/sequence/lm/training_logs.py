"""TensorBoard logs of training jobs: each job's ``<data_dir>/jobs/<job_id>/tensorboard/`` folder (next to
its checkpoint) holds one TensorBoard run, written with ``torch.utils.tensorboard`` as the job records its
events, so ``tensorboard --logdir`` on the folder (or on a download of it, ``GetTrainingLogs``) shows:

- ``train/loss``, ``train/perplexity``, ``train/learning_rate``, ``train/grad_norm`` and
  ``train/tokens_per_second`` at each step window's last step (the window's values, as in the job's history);
- ``valid/perplexity`` and ``test/perplexity`` at each evaluation's step (when the corpus has that split);
- ``samples/text`` (TensorBoard's text plugin; its reader's tag is ``samples/text/text_summary``) at each
  evaluation's step: the evaluation's text sample (``training_samples``), carried by its ``Event``;
- the hyper-parameters (the job's ``TrainingConfig``) in the same run, through the hparams plugin's summaries
  written to the run's own event file (not ``SummaryWriter.add_hparams``, which makes a sub-run).

Every run of a job (a resume, a takeover, a hand-over) opens a new event file in the same folder with
``purge_step`` = its checkpoint's step + 1 (the first run: 0, a START that purges nothing, so that
TensorBoard's server, which ignores the first START it reads, purges on the later ones): TensorBoard then
drops what earlier files hold past the checkpoint, so no step appears twice. Event files are read in name
order and their names start with the creation second, so a new file waits for the second after the newest
one's.

Only the process that records the job's events writes (data-parallel jobs: the server, from rank 0's
events). A write that fails (disk full, folder gone) never fails the job: the log is closed for the rest of
that run with one warning, training goes on, the history stays complete, and the next run of the job writes
again from its checkpoint (the steps between the failure and that checkpoint stay missing from the log).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from nnprobe_services.errors import ResourceExhausted
from nnprobe_services.sequence.lm.events import Event

log = logging.getLogger("nnprobe.sequence.lm")

#: The scalars of a step window: TensorBoard tag -> ``Event`` field.
STEP_SCALARS = {
    "train/loss": "loss",
    "train/perplexity": "perplexity",
    "train/learning_rate": "learning_rate",
    "train/grad_norm": "grad_norm",
    "train/tokens_per_second": "tokens_per_second",
}
#: The scalars of an evaluation (written when positive: a split the corpus lacks reads 0).
EVALUATION_SCALARS = {"valid/perplexity": "valid_perplexity", "test/perplexity": "test_perplexity"}
#: The tag of an evaluation's text sample.
SAMPLE_TAG = "samples/text"
FOLDER = "tensorboard"


def event_files(folder: Path) -> list[Path]:
    """The TensorBoard event files of ``folder``, in the order TensorBoard reads them (by name)."""
    return sorted(p for p in folder.glob("events.out.tfevents.*") if p.is_file()) if folder.is_dir() else []


def read_files(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    """(base name, bytes) of each event file of ``folder``, in reading order ([] without a folder).
    Raises ``ResourceExhausted`` (field ``job_id``) when they hold more than ``limit`` bytes together."""
    files = event_files(folder)
    total = sum(p.stat().st_size for p in files)
    if total > limit:
        raise ResourceExhausted(
            f"the job's TensorBoard files hold {total} bytes, over the {limit} bytes one reply carries "
            f"(max_message_bytes, NNPROBE_MAX_MESSAGE_BYTES, less 64 KiB); raise it on server and client, "
            f"or copy the folder {folder} from the server",
            field="job_id",
        )
    return [(p.name, p.read_bytes()) for p in files]


def _wait_past(files: list[Path]) -> None:
    """Sleep until the wall-clock second is past every file's creation second (its name's 4th field)."""
    seconds = [int(p.name.split(".")[3]) for p in files if p.name.split(".")[3].isdigit()]
    if seconds:
        while time.time() < max(seconds) + 1:
            time.sleep(0.05)


class TrainingLog:
    """One run's writer on a job's TensorBoard folder. ``write`` and ``close`` never raise."""

    def __init__(self, folder: Path, config: dict[str, Any], checkpoint_step: int) -> None:
        """Open a new event file in ``folder``; with earlier files there, purge their steps after
        ``checkpoint_step`` (0: none kept); without, write the hyper-parameters ``config``."""
        self.folder = folder
        self.writer: Any = None
        self.failed = False  # a write failed: the log is off for the rest of this run
        try:
            from torch.utils.tensorboard import SummaryWriter

            earlier = event_files(folder)
            _wait_past(earlier)
            # The first file's SessionLog START (step 0) purges nothing; TensorBoard's server (its plugin
            # accumulator) takes the first START it reads for the session's start and purges on later ones.
            purge = checkpoint_step + 1 if earlier else 0
            self.writer = SummaryWriter(str(folder), purge_step=purge, flush_secs=3600)
            if not earlier:
                self._write_hparams(config)
            self.writer.flush()
        except Exception as error:  # a log must never fail the job
            self._give_up(error)

    def _write_hparams(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        metrics = {tag: 0.0 for tag in (*STEP_SCALARS, *EVALUATION_SCALARS)}
        file_writer = self.writer.file_writer  # the run's own file: no sub-run
        for summary in hparams(values, metrics):
            file_writer.add_summary(summary)

    def write(self, event: Event) -> None:
        """Add the scalars of a step window or an evaluation, and an evaluation's text sample (when not
        empty), at ``event.step``, then flush."""
        if self.writer is None:
            return
        if event.kind == "step":
            scalars = {tag: getattr(event, name) for tag, name in STEP_SCALARS.items()}
        elif event.kind == "evaluation":
            scalars = {t: getattr(event, n) for t, n in EVALUATION_SCALARS.items() if getattr(event, n) > 0}
        else:
            return
        try:
            now = time.time()
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, event.step, walltime=now)
            if event.kind == "evaluation" and event.sample:
                self.writer.add_text(SAMPLE_TAG, event.sample, event.step, walltime=now)
            self.writer.flush()
        except Exception as error:
            self._give_up(error)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as error:
                self._give_up(error)
            self.writer = None

    def _give_up(self, error: Exception) -> None:
        self.failed = True
        log.warning(
            "TensorBoard log %s: %s: %s; training goes on without it until the job's next run",
            self.folder,
            type(error).__name__,
            error,
        )
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # the same failure again
                writer.close()


class TrainingLogs:
    """The open ``TrainingLog`` of each job this process records events for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, TrainingLog] = {}
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        return self.root / job_id / FOLDER

    def open(self, job_id: str, config: dict[str, Any], checkpoint_step: int) -> None:
        """Start the log of a run of ``job_id`` that continues from ``checkpoint_step`` (0: the start)."""
        opened = TrainingLog(self.folder(job_id), config, checkpoint_step)
        with self._lock:
            previous = self._open.pop(job_id, None)
            self._open[job_id] = opened
        if previous is not None:
            previous.close()

    def writing(self, job_id: str) -> bool:
        """True while the job's log of this run is open and has not failed (a sample is worth drawing)."""
        with self._lock:
            found = self._open.get(job_id)
        return found is not None and found.writer is not None

    def write(self, job_id: str, event: Event) -> None:
        with self._lock:
            found = self._open.get(job_id)
        if found is not None:
            found.write(event)

    def close(self, job_id: str) -> None:
        with self._lock:
            found = self._open.pop(job_id, None)
        if found is not None:
            found.close()
