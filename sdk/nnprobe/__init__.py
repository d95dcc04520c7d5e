"""nnprobe: classic analyses of deep networks as a service. This package is the SDK and CLI.

from nnprobe import AttentionClient
with AttentionClient("localhost:50053") as client:
    result = client.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0)
    print(result.holds, result.max_deviation)
"""

from nnprobe.attention import AttentionClient, FeedForwardResult, PermutationCheckResult
from nnprobe.config import TlsConfig
from nnprobe.errors import FieldViolation, NnprobeError
from nnprobe.sequence import SequenceClient
from nnprobe.vision import VisionClient

__version__ = "0.1.0"

__all__ = [
    "AttentionClient",
    "FeedForwardResult",
    "FieldViolation",
    "NnprobeError",
    "PermutationCheckResult",
    "SequenceClient",
    "TlsConfig",
    "VisionClient",
]
