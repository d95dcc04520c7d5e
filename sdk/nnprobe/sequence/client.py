"""``SequenceClient``: one method group per feature module."""

from __future__ import annotations

from typing import Any

from nnprobe.api.sequence.v1 import models_pb2, sequence_pb2_grpc
from nnprobe.repository_models import RepositoryModelMethods
from nnprobe.sequence.corpus import CorpusMethods
from nnprobe.sequence.gradients import GradientMethods
from nnprobe.sequence.job_handle import JobHandle
from nnprobe.sequence.jobs import JobMethods
from nnprobe.sequence.language_model import LanguageModelMethods
from nnprobe.sequence.rnn import RecurrentMethods
from nnprobe.sequence.training_logs import TrainingLogMethods
from nnprobe.sequence.truncation import TruncationMethods


class SequenceClient(
    RecurrentMethods,
    GradientMethods,
    TruncationMethods,
    CorpusMethods,
    JobMethods,
    TrainingLogMethods,
    LanguageModelMethods,
    RepositoryModelMethods,
):
    """``SequenceClient("localhost:50052")``: recurrent networks and gradient flow (``run_recurrent``,
    ``analyze_gradients``, ``compare_truncation``) and the LSTM language model (``upload_corpus``,
    ``start_training``, ``watch``, ``list_jobs``, ``get_job``, ``cancel_job``, ``resume_job``,
    ``get_training_logs``, ``download_tensorboard``, ``evaluate_perplexity``, ``sample``, ``distance``,
    ``nearest``), and the model repository of the user's own recurrent cells and sequence models
    (``upload_model``, ``list_models``, ``delete_model``).

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure. Streamed methods take ``on_progress(done, total,
    message)``.
    """

    SERVICE = "sequence"
    FULL_NAME = "nnprobe.sequence.v1.SequenceService"
    _MODELS_PB = models_pb2

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = sequence_pb2_grpc.SequenceServiceStub(self._channel)

    def job(self, job_id: str) -> JobHandle:
        """A handle on the training job ``job_id`` (one started here, or before a kernel restart):
        ``.watch()`` follows it with a progress bar and its curves, ``.result()`` waits for it. No RPC until
        one of its methods is called."""
        return JobHandle(self, job_id)
