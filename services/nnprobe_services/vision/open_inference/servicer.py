"""``inference.GRPCInferenceService`` (the Open Inference Protocol, as Triton and KServe speak it) on the
vision server's port: each handler converts the message (``convert``), runs the plain entry point
(``workflow.Inference`` over the ``protocol`` core) and converts back. ModelInfer shares the vision servicer's
model store, compute pool and dynamic batchers, so its images batch together with ``Classify``'s.

Status RPCs (live, ready, metadata, config, repository index) are bookkeeping and run in a worker thread
outside the compute pool. Triton's optional extensions nnprobe does not offer (shared-memory regions,
repository load/unload, trace and log settings) answer UNIMPLEMENTED; the shared-memory status RPCs answer
truthfully that no region is registered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nnprobe.api.inference import grpc_service_pb2 as pb
from nnprobe.api.inference import grpc_service_pb2_grpc

from nnprobe_services.errors import ServiceError, Unimplemented
from nnprobe_services.vision.classification.workflow import deadline
from nnprobe_services.vision.open_inference import convert, protocol
from nnprobe_services.vision.open_inference.workflow import Inference

#: Triton's extension names for what this server implements.
EXTENSIONS = ("classification", "model_configuration")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _server_version() -> str:
    try:
        return version("nnprobe-services")
    except PackageNotFoundError:
        return "0"


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Thin layer over ``Inference``; ``vision`` is the ``VisionServicer`` whose store, compute pool and
    classification (its batchers) it shares."""

    def __init__(self, vision: Any) -> None:
        self.compute = vision.compute
        config = vision.config
        self.core = protocol.OpenInference(
            vision.models,
            vision.limits,
            max_batch_size=config.batch_queue_size,
            default_model=config.default_model,
        )
        self.inference = Inference(self.core, vision.classification)
        settings = vision.classifier.settings
        self.batch_delay_us = round(settings.max_delay * 1e6) if settings.enabled else None

    # -- health and metadata -------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await asyncio.to_thread(self.core.server_ready))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="nnprobe", version=_server_version(), extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        ready = await asyncio.to_thread(self.inference.model_ready, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        signature = await asyncio.to_thread(self.inference.signature, request.name, request.version)
        return convert.metadata_response(signature)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        signature = await asyncio.to_thread(self.inference.signature, request.name, request.version)
        return convert.config_response(signature, self.batch_delay_us)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context
    ) -> pb.RepositoryIndexResponse:
        return convert.index_response(await asyncio.to_thread(self.inference.index, request.ready))

    # -- inference -----------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request's response in order; a failed request answers ``error_message`` with an
        ``infer_response`` that carries the request's ``id``, model name and version (so a client can match
        the error to its request), and the stream goes on, as Triton's does."""
        async for request in request_iterator:
            try:
                response = await self._infer(request, context)
            except ServiceError as error:
                yield pb.ModelStreamInferResponse(
                    error_message=str(error.message), infer_response=convert.error_response(request)
                )
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        query = convert.infer_query(request)
        inferred = await self.compute.run(context, lambda stop: self.inference.prepare(query, stop))
        outputs = await self.inference.outputs(inferred, deadline(context.time_remaining()))
        return convert.infer_response(inferred.signature, inferred.served, query.id, outputs)

    # -- extensions not offered ----------------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request, context) -> pb.SystemSharedMemoryStatusResponse:
        return pb.SystemSharedMemoryStatusResponse()

    async def CudaSharedMemoryStatus(self, request, context) -> pb.CudaSharedMemoryStatusResponse:
        return pb.CudaSharedMemoryStatusResponse()

    async def ModelStatistics(self, request, context):
        raise Unimplemented("the statistics extension is not offered; see the server's Prometheus metrics")

    async def RepositoryModelLoad(self, request, context):
        raise Unimplemented("models load on first use; upload them with VisionService.UploadModel")

    async def RepositoryModelUnload(self, request, context):
        raise Unimplemented("models cannot be unloaded; delete them with VisionService.DeleteModel")

    async def SystemSharedMemoryRegister(self, request, context):
        raise Unimplemented("shared-memory inputs are not offered; send the tensors in the request")

    async def SystemSharedMemoryUnregister(self, request, context):
        raise Unimplemented("shared-memory inputs are not offered")

    async def CudaSharedMemoryRegister(self, request, context):
        raise Unimplemented("CUDA shared-memory inputs are not offered; send the tensors in the request")

    async def CudaSharedMemoryUnregister(self, request, context):
        raise Unimplemented("CUDA shared-memory inputs are not offered")

    async def TraceSetting(self, request, context):
        raise Unimplemented("trace settings are not offered")

    async def LogSettings(self, request, context):
        raise Unimplemented("log settings are not offered; configure logging with NNPROBE_LOG_LEVEL")

    def close(self) -> None:
        self.core.close()


def add_to_server(vision: Any, server: Any) -> InferenceServicer:
    """Register the protocol beside ``vision`` (a ``VisionServicer``) on ``server`` (``grpc.aio.Server``)."""
    servicer = InferenceServicer(vision)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
