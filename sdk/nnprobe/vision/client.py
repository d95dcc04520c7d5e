"""``VisionClient``: one method group per feature module."""

from __future__ import annotations

from typing import Any

from nnprobe.api.vision.v1 import vision_pb2_grpc
from nnprobe.vision.attack_methods import AdversarialMethods
from nnprobe.vision.classify import ClassifyMethods
from nnprobe.vision.field_methods import ReceptiveFieldMethods
from nnprobe.vision.models import ModelMethods
from nnprobe.vision.robustness_jobs import RobustnessMethods


class VisionClient(
    ReceptiveFieldMethods, ModelMethods, ClassifyMethods, AdversarialMethods, RobustnessMethods
):
    """``VisionClient("localhost:50051")``: receptive fields (``compute_receptive_field``), the model
    catalogue (``list_models``), ImageNet classification (``classify``) and adversarial examples
    (``generate_adversarial``, ``attack``) and robustness evaluation (``upload_dataset``,
    ``evaluate_robustness``); see each method for its options.

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure.
    """

    SERVICE = "vision"
    FULL_NAME = "nnprobe.vision.v1.VisionService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = vision_pb2_grpc.VisionServiceStub(self._channel)
