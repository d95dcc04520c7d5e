"""VisionService on ``grpc.aio``: each handler converts the request to plain values, runs one core through
the compute pool and converts the result back.

ListModels is bookkeeping (a worker thread outside the compute pool, so it answers while the pool is full).
Classify decodes its images in the pool; with dynamic batching its images then wait in the model's batcher,
whose own thread runs the model, while the handler awaits their futures without holding a thread.
GenerateAdversarial streams the attack from the pool and asks remote servers for transfer checks over
``grpc.aio`` on the event loop. ComputeReceptiveField is ``rf_request.compute`` in the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import torch
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

from nnprobe_services.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShouldStop,
)
from nnprobe_services.server import validation as valid
from nnprobe_services.server.app import Registration, Runtime
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.server.metrics import metrics_for
from nnprobe_services.vision.attacks import convert as attack_messages
from nnprobe_services.vision.attacks import methods as attacks
from nnprobe_services.vision.attacks import transfer
from nnprobe_services.vision.attacks import workflow as attack_request
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.classification import convert as classify_messages
from nnprobe_services.vision.classification.batcher import QueueFull, batcher_metrics
from nnprobe_services.vision.images import decode as images
from nnprobe_services.vision.models import convert as model_messages
from nnprobe_services.vision.models import registry as models
from nnprobe_services.vision.models import store
from nnprobe_services.vision.models.repository import ModelRepository
from nnprobe_services.vision.open_inference import servicer as oip_servicer
from nnprobe_services.vision.receptive_fields import convert as rf_messages
from nnprobe_services.vision.receptive_fields import workflow as rf_request

log = logging.getLogger("nnprobe.vision")


@dataclasses.dataclass
class _Prepared:
    """A Classify request after its compute-pool part: the model, its (N, 3, H, W) input, when the input
    was ready (``time.monotonic()``) and, without batching, the results."""

    model: models.LoadedModel
    pixels: torch.Tensor
    ready: float
    results: list[classify.ImageResult] | None


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """Thin layer over ``classify``, ``attack_request`` and ``rf_request``."""

    def __init__(self, runtime: Runtime) -> None:
        config = runtime.config
        self.config = config
        self.device = runtime.device
        self.compute = runtime.compute
        self.models = store.ModelStore(
            runtime.device,
            explicit=config.weights_files(),
            weights_dir=config.weights_dir,
            download_timeout=config.weights_download_timeout,
            repository=ModelRepository(config.model_repository_dir, max_model_bytes=config.max_model_bytes),
            builtin_backend=config.builtin_backend,
            onnx_cache=Path(config.cache_dir) / "onnx",
            limits=store.ModelLimits(config.max_model_bytes, config.max_model_nodes),
        )
        self.classifier = classify.Classifier(
            self.models,
            batching_settings(config, runtime.device),
            batcher_metrics(metrics_for("vision").registry),
        )
        self.limits = images.ImageLimits(config.max_image_bytes, config.max_image_pixels)

    # -- RPCs ----------------------------------------------------------------------------------------
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        default = self._model_name("")
        return await asyncio.to_thread(model_messages.list_models, self.models, default)

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        start = time.monotonic()
        name = self._model_name(request.model)
        top_k = self._top_k(request.top_k, name)
        images.count_images(len(request.images), "images", self.config.batch_queue_size)
        if request.model_version < 0:
            raise InvalidArgument(f"must be >= 0, got {request.model_version}", field="model_version")
        job = await self.compute.run(context, lambda stop: self._prepare(request, name, stop))
        results = job.results
        if results is None:
            try:
                results = await self.classifier.batched(job.model, job.pixels, deadline=_deadline(context))
            except QueueFull as error:
                raise ResourceExhausted(str(error), field="images") from None
        response = pb.ClassifyResponse(
            model=name, model_version=job.model.version, preprocess_seconds=job.ready - start
        )
        response.results.extend(
            classify_messages.classification(image, result, top_k, request.return_logits, job.model.labels)
            for image, result in zip(request.images, results, strict=True)
        )
        response.total_seconds = time.monotonic() - start
        return response

    async def ComputeReceptiveField(self, request: pb.ComputeReceptiveFieldRequest, context):
        limit = self.config.max_tensor_elements
        result = await self.compute.run(
            context,
            lambda stop: rf_request.compute(
                rf_messages.field_request(request, limit), self.device, stop, self.models
            ),
        )
        return rf_messages.field_response(result)

    async def GenerateAdversarial(
        self, request: pb.GenerateAdversarialRequest, context
    ) -> AsyncIterator[pb.GenerateAdversarialResponse]:
        plan = self._attack_plan(request)
        targeted, steps = plan.target is not None, plan.spec.steps
        token = _bearer(context)

        def work(stop):
            on_stop = lambda iteration: _attack_stopped(iteration, steps, stop.reason)  # noqa: E731
            return attack_request.run(
                dataclasses.replace(plan, images=self._images(request.images)), self.models, stop, on_stop
            )

        labels = self.models.describe(plan.model)[1]
        async for event in self.compute.stream(context, work):
            if isinstance(event, attacks.Progress):
                yield attack_messages.progress(event, labels)
                continue
            remote = [
                self._remote_transfer(a, event, targeted, token, context) for a in request.transfer_addresses
            ]
            event.image.transfers.extend(await asyncio.gather(*remote))
            yield attack_messages.result(event, request.images[event.image.image].name)

    async def UploadModel(self, request_iterator, context) -> pb.UploadModelResponse:
        start = time.monotonic()
        metadata = model_messages.upload_metadata(await anext(aiter(request_iterator), None))
        upload = self.models.begin_upload(**metadata)
        try:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first message carries metadata", field="metadata")
                await asyncio.to_thread(upload.write, message.chunk)
        except BaseException:
            upload.discard()
            raise
        installed = await self.compute.run(context, lambda stop: self.models.install(upload))
        info = await asyncio.to_thread(
            model_messages.model_info, self.models, installed.name, self._model_name("")
        )
        return pb.UploadModelResponse(
            model=info, version=installed.version, sha256=upload.sha256, seconds=time.monotonic() - start
        )

    async def DeleteModel(self, request: pb.DeleteModelRequest, context) -> pb.DeleteModelResponse:
        if request.version < 0:
            raise InvalidArgument(f"must be >= 0, got {request.version}", field="version")
        name = request.name.strip()
        if name == self.config.default_model:
            raise FailedPrecondition(f"{name!r} is the server's default model", field="name")
        removed = await asyncio.to_thread(self.models.delete, name, request.version or None)
        return pb.DeleteModelResponse(removed_versions=removed)

    # -- request conversion --------------------------------------------------------------------------
    def _model_name(self, requested: str, field: str = "model") -> str:
        name = requested.strip() or self.config.default_model
        if self.models.is_builtin(name):
            return name
        try:
            self.models.describe(name, field)
        except (NotFound, InvalidArgument):
            raise NotFound(
                f"no model {name!r}; the available models are {', '.join(self.models.names())}", field=field
            ) from None
        return name

    def _top_k(self, requested: int, model: str) -> int:
        classes = self.models.describe(model)[0].num_classes or 2**31 - 1  # 0: known once loaded
        top_k = requested or 5
        if not 1 <= top_k <= classes:
            raise InvalidArgument(f"must be in 1..{classes}, got {requested}", field="top_k")
        return top_k

    def _images(self, messages, field: str = "images") -> list[images.ImageInput]:
        """Plain images; raw pixel tensors are decoded here (in a compute thread: they may be large)."""
        plain = []
        for i, image in enumerate(messages):
            if image.encoded or not image.HasField("pixels"):
                plain.append(images.ImageInput(image.encoded, None, f"{field}[{i}].encoded", image.name))
                continue
            part = f"{field}[{i}].pixels"
            pixels = valid.tensor(image.pixels, part, max_elements=self.config.max_tensor_elements)
            plain.append(images.ImageInput(b"", pixels, part, image.name))
        return plain

    def _prepare(self, request: pb.ClassifyRequest, name: str, stop: ShouldStop) -> _Prepared:
        prep = self.models.describe(name)[0].preprocessing
        pixels = images.model_inputs(
            self._images(request.images), prep, self.limits, skip_resize=request.skip_resize
        )
        model = classify.load_model(self.models, name, request.model_version or None)
        ready = time.monotonic()
        results = None if self.classifier.batching else self.classifier.forward(model, pixels, stop)
        return _Prepared(model, pixels, ready, results)

    def _attack_plan(self, request: pb.GenerateAdversarialRequest) -> attack_request.AttackRequest:
        """Everything of the attack but its images, checked in the order clients know."""
        name = self._model_name(request.model)
        top_k = self._top_k(request.top_k, name)
        record, labels = self.models.describe(name)
        target = attack_messages.target(request, record.num_classes, labels)
        spec = attack_messages.spec(request, self.config.max_attack_steps)
        others = [
            self._model_name(o or "-", field=f"transfer_models[{i}]")
            for i, o in enumerate(request.transfer_models)
        ]
        attack_messages.check_transfer_targets(request)
        version = self.models.version(name, request.model_version, "model_version")
        versions = attack_messages.transfer_versions(request)
        transfer_versions = [
            self.models.version(other, v, f"transfer_model_versions[{i}]")
            for i, (other, v) in enumerate(zip(others, versions, strict=True))
        ]
        attack_messages.check_distinct_transfer_models(others, transfer_versions)
        images.count_images(len(request.images), "images", self.config.batch_queue_size)
        return attack_request.AttackRequest(
            name, [], target, spec, top_k, self.limits, others, version, transfer_versions
        )

    # -- transfer checks on other servers ------------------------------------------------------------
    async def _remote_transfer(
        self, address: str, outcome: attack_request.AttackResult, targeted: bool, token: str | None, context
    ):
        """Classify the 8-bit adversarial picture on the server at ``address`` (its default model, no
        resize), with this call's bearer token, within what is left of this call's deadline."""
        goal = outcome.image.goal_class
        call = pb.ClassifyRequest(
            images=[common_pb2.Image(encoded=outcome.adversarial_png)], skip_resize=True, top_k=1
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        budget = transfer.call_timeout(_remaining(context))
        started = time.monotonic()
        try:
            async with grpc.aio.insecure_channel(address, options=transfer.channel_options()) as channel:
                wait = min(self.config.transfer_connect_timeout, budget)
                try:  # a replica that is restarting: reconnect with gRPC's backoff until it accepts
                    await asyncio.wait_for(channel.channel_ready(), wait)
                except TimeoutError:
                    if self.config.transfer_connect_timeout:
                        error = transfer.unreachable(address, wait)
                        return transfer.remote_outcome(address, "", None, goal, targeted, error)
                left = max(budget - (time.monotonic() - started), 0.001)
                answer = await vision_pb2_grpc.VisionServiceStub(channel).Classify(
                    call, timeout=left, metadata=metadata
                )
        except grpc.RpcError as error:
            text = f"{error.code().name}: {error.details()} (at {address})"  # type: ignore[attr-defined]
            return transfer.remote_outcome(address, "", None, goal, targeted, text)
        except ValueError as error:
            return transfer.remote_outcome(address, "", None, goal, targeted, str(error))
        best = answer.results[0].top[0]
        score = classify.ClassScore(best.index, best.label, best.probability)
        return transfer.remote_outcome(address, answer.model, score, goal, targeted)


def batching_settings(config: ServerConfig, device: torch.device) -> classify.BatchingSettings:
    """The dynamic batcher's settings: configured values, else 64 images / 2 ms on a GPU, 16 / 5 ms on CPU."""
    gpu = device.type == "cuda"
    delay_ms = config.batch_max_delay_ms
    if delay_ms is None:
        delay_ms = 2.0 if gpu else 5.0
    return classify.BatchingSettings(
        enabled=config.dynamic_batching,
        max_size=config.batch_max_size or (64 if gpu else 16),
        max_delay=delay_ms / 1000.0,
        queue_size=config.batch_queue_size,
    )


def _bearer(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _remaining(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(remaining, 0.001)


def _deadline(context) -> float | None:
    remaining = _remaining(context)
    return None if remaining is None else time.monotonic() + remaining


# -- stopped attacks: log line and metrics -----------------------------------------------------------------
_stop_metrics_lock = threading.Lock()


def _attack_stopped(iteration: int, steps: int, reason: str) -> None:
    counter, gauge = _attack_stop_metrics()
    counter.inc()
    gauge.set(iteration)
    log.info("GenerateAdversarial stopped after iteration %d of %d: %s", iteration, steps, reason)


def _attack_stop_metrics():
    from prometheus_client import Counter, Gauge

    holder = metrics_for("vision")
    with _stop_metrics_lock:
        if not hasattr(holder, "attack_stops"):
            holder.attack_stops = (  # type: ignore[attr-defined]
                Counter(
                    "nnprobe_attack_stopped",
                    "Attacks stopped by cancellation or deadline.",
                    registry=holder.registry,
                ),
                Gauge(
                    "nnprobe_attack_stopped_at_iteration",
                    "The last iteration finished by the most recently stopped attack.",
                    registry=holder.registry,
                ),
            )
        return holder.attack_stops  # type: ignore[attr-defined]


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add VisionService and ``inference.GRPCInferenceService`` to ``server``; the batchers close when the
    server stops."""
    models.records(), models.imagenet_labels()  # built once here, never on the event loop
    servicer = VisionServicer(runtime)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, server)
    inference = oip_servicer.add_to_server(servicer, server)  # the Open Inference Protocol, same port
    return Registration(
        [pb.DESCRIPTOR.services_by_name["VisionService"].full_name, oip_servicer.SERVICE_NAME],
        closers=[servicer.classifier.close, inference.close],
    )
