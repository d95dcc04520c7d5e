"""nnprobe: classic analyses of deep networks as a service. This package is the SDK and CLI.

from nnprobe import AttentionClient
with AttentionClient("localhost:50053") as client:
    result = client.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0)
    print(result.holds, result.max_deviation)

One client per service (``VisionClient``, ``SequenceClient``, ``AttentionClient``) and their asyncio twins
in ``nnprobe.aio``; every result type, ``Progress`` (what streamed calls report to ``on_progress``), and
the exceptions (``NnprobeError`` and one subclass per gRPC status) are importable from here.
"""

from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe.attention import AttentionClient, FeedForwardResult, PermutationCheckResult
from nnprobe.config import TlsConfig
from nnprobe.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NnprobeError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.sequence import (
    CorpusInfo,
    EmbeddingDistance,
    GradientAnalysis,
    GradientRun,
    JobEvent,
    NearestWords,
    Perplexity,
    RecurrentResult,
    SampleResult,
    SequenceClient,
    TrainingJob,
    TruncationComparison,
    TruncationPoint,
)
from nnprobe.vision import (
    AdversarialResult,
    AttackProgress,
    AxisField,
    Classification,
    ClassifyResult,
    ClassScore,
    EffectiveField,
    EffectiveProtocol,
    Interval,
    Layer,
    LayerField,
    ModelInfo,
    ModelVersion,
    Preprocessing,
    ReceptiveFieldResult,
    Tiling,
    TransferResult,
    UnitField,
    UploadResult,
    Verification,
    VisionClient,
)

__version__ = "0.1.0"

__all__ = [
    "USE_CLIENT_DEFAULT",
    "Aborted",
    "AdversarialResult",
    "AlreadyExists",
    "AttackProgress",
    "AttentionClient",
    "AxisField",
    "Cancelled",
    "ClassScore",
    "Classification",
    "ClassifyResult",
    "CorpusInfo",
    "DataLoss",
    "DeadlineExceeded",
    "EffectiveField",
    "EffectiveProtocol",
    "EmbeddingDistance",
    "FailedPrecondition",
    "FeedForwardResult",
    "FieldViolation",
    "GradientAnalysis",
    "GradientRun",
    "Internal",
    "Interval",
    "InvalidArgument",
    "JobEvent",
    "Layer",
    "LayerField",
    "ModelInfo",
    "ModelVersion",
    "NearestWords",
    "NnprobeError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PermutationCheckResult",
    "Perplexity",
    "Preprocessing",
    "Progress",
    "ProgressCallback",
    "ReceptiveFieldResult",
    "RecurrentResult",
    "ResourceExhausted",
    "SampleResult",
    "SequenceClient",
    "Tiling",
    "TlsConfig",
    "TrainingJob",
    "TransferResult",
    "TruncationComparison",
    "TruncationPoint",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnitField",
    "Unknown",
    "UploadResult",
    "UseClientDefault",
    "Verification",
    "VisionClient",
]
