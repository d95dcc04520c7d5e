"""VisionService on ``grpc.aio``: each handler converts the request to plain values, runs its feature's
workflow through the compute pool and converts the result back.

ListModels is bookkeeping (a worker thread outside the compute pool, so it answers while the pool is full).
Classify decodes its images in the pool; with dynamic batching its images then wait in the model's batcher,
whose own thread runs the model, while the handler awaits their futures without holding a thread.
GenerateAdversarial streams the attack from the pool and asks remote servers for transfer checks over
``grpc.aio`` on the event loop (``methods.remote``). ComputeReceptiveField runs in the pool.
EvaluateRobustness checks its request in the pool and queues a durable job (``robustness.jobs``) that this
replica's supervisor thread, or another replica's, runs; the job RPCs read the job store in worker threads;
WatchRobustnessJob waits for changes without holding a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from nnprobe.api.vision.v1 import robustness_pb2 as rpb
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

from nnprobe_services.sequence.jobs.watch import JobChanges
from nnprobe_services.server.app import Registration, Runtime
from nnprobe_services.server.metrics import metrics_for
from nnprobe_services.vision.attacks import convert as attack_convert
from nnprobe_services.vision.attacks import methods, remote
from nnprobe_services.vision.attacks import workflow as attack_workflow
from nnprobe_services.vision.attacks.metrics import attack_metrics
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.classification import convert as classification_convert
from nnprobe_services.vision.classification import workflow as classification
from nnprobe_services.vision.classification.batcher import batcher_metrics
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models import convert as model_convert
from nnprobe_services.vision.models import registry, store
from nnprobe_services.vision.models.repository import ModelRepository
from nnprobe_services.vision.open_inference import servicer as oip_servicer
from nnprobe_services.vision.receptive_fields import convert as rf_convert
from nnprobe_services.vision.receptive_fields import workflow as rf_workflow
from nnprobe_services.vision.robustness import convert as rob_convert
from nnprobe_services.vision.robustness import workflow as rob_workflow
from nnprobe_services.vision.robustness.datasets import DatasetLimits, DatasetStore


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """Thin layer over the feature workflows: classification, attacks, models, receptive fields."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        config = runtime.config
        self.config = config
        self.device = runtime.device
        self.compute = runtime.compute
        self.models = store.ModelStore(
            runtime.device,
            explicit=config.weights_files(),
            weights_dir=config.vision.weights_dir,
            download_timeout=config.vision.weights_download_timeout,
            repository=ModelRepository(
                config.model_repository_dir, max_model_bytes=config.vision.max_model_bytes
            ),
            builtin_backend=config.vision.builtin_backend,
            onnx_cache=Path(config.common.cache_dir) / "onnx",
            limits=store.ModelLimits(config.vision.max_model_bytes, config.vision.max_model_nodes),
        )
        metrics = metrics_for("vision").registry
        settings = classification.batching_settings(config, runtime.device)
        self.classifier = classify.Classifier(self.models, settings, batcher_metrics(metrics))
        self.attack_metrics = attack_metrics(metrics)
        self.limits = decode.ImageLimits(config.vision.max_image_bytes, config.vision.max_image_pixels)
        self.classification = classification.Classification(
            self.models,
            self.classifier,
            self.limits,
            default_model=config.vision.default_model,
            max_images=config.vision.batch_queue_size,
        )
        datasets = DatasetStore(
            Path(config.common.data_dir) / "vision" / "datasets",
            DatasetLimits(config.vision.max_dataset_images, config.vision.max_dataset_bytes),
            config.vision.datasets_dir,
        )
        self.robustness = rob_workflow.open_jobs(config, self.models, datasets, self.limits)
        self.changes = JobChanges(loop)
        self.robustness.jobs.add_listener(self.changes.notify)
        #: Set once ``drain`` has handed this replica's robustness jobs over: watch streams end then.
        self.drained = asyncio.Event()

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        default = self.classification.model_name("")
        return await asyncio.to_thread(model_convert.list_models, self.models, default)

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        query = classification_convert.query(request, self.config.common.max_tensor_elements)
        plan = self.classification.plan(query)
        job = await self.compute.run(context, lambda stop: self.classification.prepare(plan, stop))
        results = await self.classification.results(job, classification.deadline(context.time_remaining()))
        return classification_convert.response(plan, job, results)

    async def ComputeReceptiveField(self, request: pb.ComputeReceptiveFieldRequest, context):
        limit = (
            self.config.common.max_tensor_elements
        )  # the request is read in the pool: its tensors may be large
        result = await self.compute.run(
            context,
            lambda stop: rf_workflow.compute(
                rf_convert.field_request(request, limit), self.device, stop, self.models
            ),
        )
        return rf_convert.field_response(result)

    async def GenerateAdversarial(
        self, request: pb.GenerateAdversarialRequest, context
    ) -> AsyncIterator[pb.GenerateAdversarialResponse]:
        config = self.config
        plan = attack_convert.attack_request(
            request, self.classification, config.vision.max_attack_steps, config.common.max_tensor_elements
        )
        work = lambda stop: attack_workflow.run(plan, self.models, stop, self.attack_metrics)  # noqa: E731
        async for event in self.compute.stream(context, work):
            if isinstance(event, methods.Progress):
                yield attack_convert.progress(event, plan.labels)
                continue
            checks = await remote.transfers(
                request.transfer_addresses, event, context, config.vision.transfer_connect_timeout
            )
            event.image.transfers.extend(checks)
            yield attack_convert.result(event, request.images[event.image.image].name)

    async def UploadModel(self, request_iterator, context) -> pb.UploadModelResponse:
        started = time.monotonic()
        upload = await model_convert.receive_upload(request_iterator, self.models)
        installed = await self.compute.run(context, lambda stop: self.models.install(upload))
        default = self.classification.model_name("")
        info = await asyncio.to_thread(model_convert.model_info, self.models, installed.name, default)
        return model_convert.upload_response(info, installed, upload, started)

    async def DeleteModel(self, request: pb.DeleteModelRequest, context) -> pb.DeleteModelResponse:
        name, version = model_convert.deletion(request, self.config.vision.default_model)
        removed = await asyncio.to_thread(self.models.delete, name, version)
        return pb.DeleteModelResponse(removed_versions=removed)

    # -- robustness evaluation -------------------------------------------------------------------------
    async def UploadDataset(self, request_iterator, context) -> rpb.UploadDatasetResponse:
        datasets = self.robustness.datasets
        return rob_convert.dataset_response(await rob_convert.receive_dataset(request_iterator, datasets))

    async def EvaluateRobustness(self, request, context) -> rpb.EvaluateRobustnessResponse:
        plan = rob_convert.evaluation(request)
        remaining = context.time_remaining()
        job = await self.compute.run(
            context, lambda _stop: rob_workflow.start(self.robustness, plan, remaining)
        )
        return rpb.EvaluateRobustnessResponse(job=rob_convert.job(job))

    async def GetRobustnessJob(self, request, context) -> rpb.GetRobustnessJobResponse:
        def read() -> rpb.GetRobustnessJobResponse:
            job = self.robustness.jobs.get(request.job_id)
            found = rob_workflow.result(self.robustness, job)
            reply = rpb.GetRobustnessJobResponse(job=rob_convert.job(job))
            if found is not None:
                reply.result.CopyFrom(rob_convert.result(found))
            return reply

        return await asyncio.to_thread(read)

    async def ListRobustnessJobs(self, request, context) -> rpb.ListRobustnessJobsResponse:
        states, limit = rob_convert.states(request), rob_convert.limit(request)
        found = await asyncio.to_thread(rob_workflow.list_jobs, self.robustness, states, limit)
        return rpb.ListRobustnessJobsResponse(jobs=[rob_convert.job(job) for job in found])

    async def WatchRobustnessJob(self, request, context) -> AsyncIterator[rpb.WatchRobustnessJobResponse]:
        job_id = request.job_id
        events = rob_workflow.watch(
            self.robustness, self.changes, job_id, request.after_sequence, self.drained
        )
        async for event in events:
            yield await asyncio.to_thread(rob_convert.event_reply, self.robustness, event)

    async def CancelRobustnessJob(self, request, context) -> rpb.CancelRobustnessJobResponse:
        job = await rob_workflow.cancel(self.robustness, self.changes, request.job_id)
        return rpb.CancelRobustnessJobResponse(job=rob_convert.job(job))

    async def ResumeRobustnessJob(self, request, context) -> rpb.ResumeRobustnessJobResponse:
        job = await asyncio.to_thread(self.robustness.jobs.resume, request.job_id)
        return rpb.ResumeRobustnessJobResponse(job=rob_convert.job(job))

    async def drain(self, grace: float) -> None:
        """Hand this replica's running robustness jobs back to the shared queue (each stops at its next
        iteration and continues elsewhere from its last checkpoint), then end the watch streams."""
        try:
            await asyncio.to_thread(self.robustness.jobs.shutdown, max(0.0, grace - 0.5))
        finally:
            self.drained.set()
            self.changes.wake_all()


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add VisionService and ``inference.GRPCInferenceService`` to ``server``; the batchers close when the
    server stops."""
    registry.records(), registry.imagenet_labels()  # built once here, never on the event loop
    servicer = VisionServicer(runtime, asyncio.get_running_loop())
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, server)
    inference = oip_servicer.add_to_server(servicer, server)  # the Open Inference Protocol, same port
    return Registration(
        [pb.DESCRIPTOR.services_by_name["VisionService"].full_name, oip_servicer.SERVICE_NAME],
        drain=servicer.drain,
        closers=[servicer.classifier.close, inference.close, servicer.robustness.jobs.close],
    )
