"""Client for SequenceService: recurrent forward passes, gradient flow, truncated-BPTT memory and the LSTM
language model.

One module per feature: ``rnn``, ``gradients``, ``truncation``, ``corpus``, ``jobs``, ``language_model``
(with ``cells`` and ``progress`` shared by them); ``SequenceClient`` gathers their methods.
"""

from nnprobe.sequence.cells import CELLS, INIT_SCHEMES, INPUT_DISTRIBUTIONS
from nnprobe.sequence.client import SequenceClient
from nnprobe.sequence.corpus import SPLITS, CorpusInfo
from nnprobe.sequence.gradients import GradientAnalysis, GradientRun
from nnprobe.sequence.jobs import JOB_STATES, OPTIMIZERS, TERMINAL_STATES, JobEvent, TrainingJob
from nnprobe.sequence.language_model import (
    CHECKPOINTS,
    METRICS,
    STRATEGIES,
    EmbeddingDistance,
    NearestWords,
    Perplexity,
    SampleResult,
)
from nnprobe.sequence.model_gradients import ModelGradientFlow
from nnprobe.sequence.progress import ProgressCallback
from nnprobe.sequence.rnn import RecurrentResult
from nnprobe.sequence.training_logs import TensorBoardLogs, TrainingLogs
from nnprobe.sequence.truncation import TruncationComparison, TruncationPoint

__all__ = [
    "CELLS",
    "CHECKPOINTS",
    "INIT_SCHEMES",
    "INPUT_DISTRIBUTIONS",
    "JOB_STATES",
    "METRICS",
    "OPTIMIZERS",
    "SPLITS",
    "STRATEGIES",
    "TERMINAL_STATES",
    "CorpusInfo",
    "EmbeddingDistance",
    "GradientAnalysis",
    "GradientRun",
    "JobEvent",
    "ModelGradientFlow",
    "NearestWords",
    "Perplexity",
    "ProgressCallback",
    "RecurrentResult",
    "SampleResult",
    "SequenceClient",
    "TensorBoardLogs",
    "TrainingJob",
    "TrainingLogs",
    "TruncationComparison",
    "TruncationPoint",
]
