"""A training job's TensorBoard files, downloaded into a folder for ``tensorboard --logdir``."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.errors import DataLoss

#: How every event file's name starts (TensorBoard reads only such files).
EVENT_FILE_PREFIX = "events.out.tfevents."


@rich_result()
@dataclass
class TensorBoardLogs:
    """The files ``download_tensorboard`` wrote: ``out_dir`` (run ``tensorboard --logdir out_dir``),
    ``files`` (paths in ``out_dir``, in the order TensorBoard reads them) and ``total_bytes``."""

    job_id: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0
    raw: Any = field(default=None, repr=False)


def safe_name(name: str) -> str:
    """``name`` when it is a plain event-file base name; ``DataLoss`` otherwise (a name with a folder, a
    parent reference, a NUL or another prefix is never written)."""
    plain = name == os.path.basename(name) and "/" not in name and "\\" not in name and "\0" not in name
    if not plain or name in ("", ".", "..") or not name.startswith(EVENT_FILE_PREFIX):
        raise DataLoss(f"the server sent a TensorBoard file named {name!r}, not an event file's base name")
    return name


@rich_result()
@dataclass
class TrainingLogs:
    """A job's TensorBoard event files (``get_training_logs``): ``names`` (checked base names, in the order
    TensorBoard reads them), ``data`` (each file's bytes) and ``total_bytes``. ``save(out_dir)`` writes
    them."""

    job_id: str
    names: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list, repr=False)
    total_bytes: int = 0
    raw: Any = field(default=None, repr=False)

    def save(self, out_dir: str | os.PathLike[str]) -> TensorBoardLogs:
        """Write each file into ``out_dir`` (created if missing) under its base name, atomically (a
        temporary file, then a rename); files of the same name are replaced, others left alone."""
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in zip(self.names, self.data, strict=True):
            handle, temporary = tempfile.mkstemp(prefix=".partial-", dir=folder)
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, folder / name)
            written.append(folder / name)
        return TensorBoardLogs(self.job_id, folder, written, self.total_bytes, self.raw)


def training_logs(response: Any, job_id: str) -> TrainingLogs:
    """The ``TrainingLogs`` of a ``GetTrainingLogsResponse``; ``DataLoss`` for an unsafe file name."""
    names = [safe_name(f.name) for f in response.files]
    data = [f.data for f in response.files]
    return TrainingLogs(job_id, names, data, sum(len(d) for d in data), response)


class TrainingLogMethods(BaseClient):
    _stub: Any

    def get_training_logs(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingLogs:
        """The TensorBoard event files of job ``job_id``, in memory (``GetTrainingLogs``): one run with the
        training loss, perplexity, learning rate and gradient norm of each step window, the validation
        and test perplexity of each evaluation, and the hyper-parameters. ``download_tensorboard`` saves
        them into a folder.

        Raises ``nnprobe.NotFound`` (unknown job), ``nnprobe.ResourceExhausted`` (the files exceed the
        server's message size limit), ``nnprobe.DataLoss`` (the server sent an unsafe file name).
        """
        request = pb.GetTrainingLogsRequest(job_id=job_id)
        return training_logs(self._unary(self._stub.GetTrainingLogs, request, timeout), job_id)

    def download_tensorboard(
        self,
        job_id: str,
        out_dir: str | os.PathLike[str],
        *,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TensorBoardLogs:
        """Save the TensorBoard event files of job ``job_id`` (``get_training_logs``) into ``out_dir``, for
        ``tensorboard --logdir out_dir``; call it again to refresh a running job's files. Nothing is
        written when the call fails. Same errors as ``get_training_logs``."""
        return self.get_training_logs(job_id, timeout=timeout).save(out_dir)
