"""Client for VisionService: receptive fields, ImageNet classification and adversarial examples.

One module per feature: ``receptive_field``, ``models``, ``classify``, ``adversarial``, ``robustness`` and
``robustness_jobs`` (and ``images``, how images travel); ``VisionClient`` gathers their methods.
"""

from nnprobe.vision.adversarial import (
    ATTACK_METHODS,
    AdversarialResult,
    AttackProgress,
    TransferResult,
    parse_epsilon,
)
from nnprobe.vision.classify import Classification, ClassifyResult, ClassScore
from nnprobe.vision.client import VisionClient
from nnprobe.vision.field_tiling import EffectiveProtocol, Tiling
from nnprobe.vision.images import ImageLike, image_message
from nnprobe.vision.models import ModelInfo, ModelVersion, Preprocessing, UploadResult
from nnprobe.vision.receptive_field import (
    AxisField,
    EffectiveField,
    Interval,
    Layer,
    LayerField,
    Pair,
    ReceptiveFieldResult,
    UnitField,
    Verification,
)
from nnprobe.vision.robustness import (
    DatasetInfo,
    EpsilonAccuracy,
    ImageRobustness,
    RobustnessEvent,
    RobustnessJob,
    RobustnessResult,
    RobustnessWarning,
)
from nnprobe.vision.robustness_jobs import RobustnessJobHandle

__all__ = [
    "ATTACK_METHODS",
    "AdversarialResult",
    "AttackProgress",
    "AxisField",
    "ClassScore",
    "Classification",
    "ClassifyResult",
    "DatasetInfo",
    "EffectiveField",
    "EffectiveProtocol",
    "EpsilonAccuracy",
    "ImageLike",
    "ImageRobustness",
    "Interval",
    "Layer",
    "LayerField",
    "ModelInfo",
    "ModelVersion",
    "Pair",
    "Preprocessing",
    "ReceptiveFieldResult",
    "RobustnessEvent",
    "RobustnessJob",
    "RobustnessJobHandle",
    "RobustnessResult",
    "RobustnessWarning",
    "Tiling",
    "TransferResult",
    "UnitField",
    "UploadResult",
    "Verification",
    "VisionClient",
    "image_message",
    "parse_epsilon",
]
