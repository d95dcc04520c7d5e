"""The classifiers a vision server can serve (``list_models``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnprobe._client import DEFAULT, BaseClient, _Default
from nnprobe.api.vision.v1 import vision_pb2 as pb


@dataclass
class Preprocessing:
    """A model's preprocessing: shorter side to ``resize``, centre crop ``crop`` (h, w), /255, normalise."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ModelInfo:
    """One classifier the server can serve."""

    name: str
    architecture: str
    source: str
    weights_present: bool
    weights_path: str
    weights_file_name: str
    searched: list[str]
    #: sha256 of the weights file ("" when absent).
    version: str
    preprocessing: Preprocessing
    num_classes: int
    is_default: bool
    raw: Any = field(repr=False, default=None)


def _model_info(m: Any) -> ModelInfo:
    p = m.preprocessing
    return ModelInfo(
        name=m.name,
        architecture=m.architecture,
        source=m.source,
        weights_present=m.weights_present,
        weights_path=m.weights_path,
        weights_file_name=m.weights_file_name,
        searched=list(m.searched),
        version=m.version,
        preprocessing=Preprocessing(
            p.resize, (p.crop.height, p.crop.width), p.interpolation, tuple(p.mean), tuple(p.std)
        ),
        num_classes=m.num_classes,
        is_default=m.is_default,
        raw=m,
    )


class ModelMethods(BaseClient):
    """The model-catalogue method of ``VisionClient``."""

    _stub: Any

    def list_models(self, *, timeout: float | _Default | None = DEFAULT) -> list[ModelInfo]:
        """Every classifier the server can serve, the default first."""
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_model_info(m) for m in response.models]
