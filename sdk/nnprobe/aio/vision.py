"""``nnprobe.aio.VisionClient``: the asyncio twin of ``nnprobe.VisionClient``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.aio._base import AsyncBaseClient, documented_as
from nnprobe.aio.robustness import AsyncRobustnessMethods
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.vision import classify, field_methods, models, receptive_field
from nnprobe.vision.adversarial import AdversarialResult, AttackProgress, _attack_request
from nnprobe.vision.attack_methods import attack_event, collect
from nnprobe.vision.classify import ClassifyResult
from nnprobe.vision.client import VisionClient as SyncVisionClient
from nnprobe.vision.images import ImageLike
from nnprobe.vision.model_spec import hint as size_hint
from nnprobe.vision.models import ModelInfo, UploadResult
from nnprobe.vision.receptive_field import Layer, Pair, ReceptiveFieldResult


@documented_as(SyncVisionClient)
class VisionClient(AsyncRobustnessMethods, AsyncBaseClient):
    """``nnprobe.aio.VisionClient("localhost:50051")``: ``await`` each method of ``nnprobe.VisionClient``
    (``async for`` over ``generate_adversarial``); ``async with`` closes the channel."""

    SERVICE = "vision"
    FULL_NAME = "nnprobe.vision.v1.VisionService"
    STUB = vision_pb2_grpc.VisionServiceStub

    async def compute_receptive_field(
        self,
        layers: Iterable[Layer | pb.LayerSpec] | None = None,
        *,
        model: str | None = None,
        end_point: str | None = None,
        input_size: Pair | None = None,
        first_pixel_center: float | None = None,
        units: Iterable[tuple[str, int, int] | pb.UnitQuery] = (),
        verify: bool = False,
        effective_field: bool = False,
        erf_samples: int = 0,
        erf_seed: int = 0,
        erf_unit: tuple[str, int, int] | None = None,
        model_seed: int = 0,
        plot: bool = False,
        image: bytes | str | Path | np.ndarray | None = None,
        strict: bool = False,
        onnx: bytes | str | Path | None = None,
        model_version: int = 0,
        model_options: Mapping[str, Any] | None = None,
        send_weights: bool | None = None,
        tiling: Pair | None = None,
        prove_tiling: bool = False,
        erf_weights: str | None = None,
        erf_images: Iterable[Any] = (),
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> ReceptiveFieldResult:
        request = field_methods.receptive_field_request(**request_arguments(locals()))
        hint = size_hint(request)
        response = await self._unary(self._stub.ComputeReceptiveField, request, timeout, hint=hint)
        return receptive_field._result(response)

    async def list_models(
        self, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[ModelInfo]:
        response = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [models._model_info(m) for m in response.models]

    async def upload_model(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        labels: Sequence[str] | os.PathLike[str] | str | None = None,
        version: int = 0,
        format: str | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> UploadResult:
        arguments = request_arguments(locals())
        with reporting(progress, on_progress, f"upload {name}", "B") as report:
            messages = models.upload_model_messages(**arguments, on_progress=report)
            return models.upload_result(await self._unary(self._stub.UploadModel, messages, timeout))

    async def delete_model(
        self, name: str, *, version: int = 0, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[int]:
        request = pb.DeleteModelRequest(name=name, version=version)
        return list((await self._unary(self._stub.DeleteModel, request, timeout)).removed_versions)

    async def classify(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        model: str | None = None,
        top_k: int = 5,
        skip_resize: bool = False,
        return_logits: bool = False,
        names: Sequence[str] | None = None,
        model_version: int = 0,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> ClassifyResult:
        request = classify.classify_request(**request_arguments(locals()))
        return classify._classify_result(await self._unary(self._stub.Classify, request, timeout))

    async def generate_adversarial(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        target: int | str | None = None,
        untargeted: bool = False,
        method: str = "pgd",
        norm: str | None = None,
        eps: float | str | None = None,
        step_size: float | str | None = None,
        steps: int = 0,
        seed: int = 0,
        random_start: bool | None = None,
        early_stop: bool | None = None,
        refine_steps: int = 0,
        learning_rate: float | None = None,
        momentum_decay: float | None = None,
        cw_c: float | None = None,
        cw_confidence: float = 0.0,
        model: str | None = None,
        model_version: int = 0,
        top_k: int = 5,
        transfer_models: Sequence[str] = (),
        transfer_model_versions: Sequence[int] = (),
        transfer_addresses: Sequence[str] = (),
        names: Sequence[str] | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> AsyncIterator[AttackProgress | AdversarialResult]:
        request = _attack_request(**request_arguments(locals()))
        async for event in self._stream(self._stub.GenerateAdversarial, request, timeout):
            converted = attack_event(event)
            if converted is not None:
                yield converted

    async def attack(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        target: int | str | None = None,
        untargeted: bool = False,
        method: str = "pgd",
        norm: str | None = None,
        eps: float | str | None = None,
        step_size: float | str | None = None,
        steps: int = 0,
        seed: int = 0,
        random_start: bool | None = None,
        early_stop: bool | None = None,
        refine_steps: int = 0,
        learning_rate: float | None = None,
        momentum_decay: float | None = None,
        cw_c: float | None = None,
        cw_confidence: float = 0.0,
        model: str | None = None,
        model_version: int = 0,
        top_k: int = 5,
        transfer_models: Sequence[str] = (),
        transfer_model_versions: Sequence[int] = (),
        transfer_addresses: Sequence[str] = (),
        names: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> list[AdversarialResult]:
        request = _attack_request(**request_arguments(locals()))
        results: list[AdversarialResult] = []
        with reporting(progress, on_progress, "attack", "iterations") as report:
            async for event in self._stream(self._stub.GenerateAdversarial, request, timeout):
                collect(attack_event(event), request, results, report)
        return sorted(results, key=lambda r: r.image)
