"""AttentionService: each handler converts the request to plain values (``convert``), plans and runs one
check (``workflow``; a repository token model's symmetry certificate when the request names a ``model``),
and converts the result back. Decoding tensors and checking them is NumPy work, so
reading the request runs in the compute pool with the check, never on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.attention.v1 import attention_pb2_grpc, models_pb2

from nnprobe_services.attention import convert, workflow
from nnprobe_services.attention.certificates.certify import Certificate
from nnprobe_services.attention.checks import PermutationCheck
from nnprobe_services.attention.plans import Limits
from nnprobe_services.errors import StopSignal
from nnprobe_services.repository import convert as model_convert
from nnprobe_services.repository.task_models import TaskModels
from nnprobe_services.server.app import Registration, Runtime


class AttentionServicer(attention_pb2_grpc.AttentionServiceServicer):
    """Thin layer over ``nnprobe_services.attention.workflow``."""

    def __init__(self, runtime: Runtime) -> None:
        self.device = runtime.device
        self.compute = runtime.compute
        self.limits = Limits(
            runtime.config.common.max_tensor_elements, runtime.config.attention.max_permutations
        )
        #: The user's token models (token_model): UploadModel/ListModels/DeleteModel.
        self.repository = TaskModels(
            runtime.config.attention_model_repository_dir,
            accepted=("token_model",),
            max_model_bytes=runtime.config.vision.max_model_bytes,
            max_model_nodes=runtime.config.vision.max_model_nodes,
        )

    async def CheckPermutationEquivariance(self, request, context):
        if request.model:
            result = await self.compute.run(context, self._certify(request, "equivariance"))
            return convert.model_equivariance_reply(result)

        def check(stop: StopSignal) -> PermutationCheck:
            convert.refuse_model_fields(request)
            spec, options = convert.permutation_check(request.attention, request.permutations, self.limits)
            return workflow.equivariance(spec, options, self.limits, self.device, stop)

        return convert.equivariance_reply(await self.compute.run(context, check))

    async def CheckPoolingInvariance(self, request, context):
        if request.model:
            result = await self.compute.run(context, self._certify(request, "invariance"))
            return convert.model_pooling_reply(result)
        pooling = convert.pooling(request)

        def check(stop: StopSignal) -> PermutationCheck:
            convert.refuse_model_fields(request)
            spec, options = convert.permutation_check(request.attention, request.permutations, self.limits)
            return workflow.pooling_invariance(spec, options, pooling, self.limits, self.device, stop)

        return convert.pooling_reply(await self.compute.run(context, check))

    def _certify(self, request, action: str) -> Callable[[StopSignal], Certificate]:
        """The certificate of the repository token model a Check* request names (``action``:
        ``equivariance`` or ``invariance``), as a function for the compute pool."""
        resolve = workflow.token_model_resolver(self.repository)

        def run(stop: StopSignal) -> Certificate:
            spec = convert.model_check(request, action, self.limits)
            return workflow.model_certificate(spec, resolve, self.limits, self.device, stop)

        return run

    async def CheckFeedForwardEquivalence(self, request, context):
        result = await self.compute.run(
            context,
            lambda stop: workflow.feed_forward(
                convert.feed_forward_spec(request, self.limits), self.limits, self.device, stop
            ),
        )
        return convert.feed_forward_reply(result)

    # -- the model repository ------------------------------------------------------------------------
    async def UploadModel(self, request_iterator, context) -> models_pb2.UploadModelResponse:
        started = time.monotonic()
        upload = await model_convert.receive_upload(request_iterator, self.repository)
        installed = await self.compute.run(context, lambda _stop: self.repository.install(upload))
        return model_convert.upload_response(models_pb2, installed, started)

    async def ListModels(self, request, context) -> models_pb2.ListModelsResponse:
        return await asyncio.to_thread(model_convert.list_models, models_pb2, self.repository)

    async def DeleteModel(self, request, context) -> models_pb2.DeleteModelResponse:
        name, version = model_convert.deletion(request)
        removed = await asyncio.to_thread(self.repository.delete, name, version)
        return models_pb2.DeleteModelResponse(removed_versions=removed)


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add the servicer to ``server``; return the full names of the services added."""
    attention_pb2_grpc.add_AttentionServiceServicer_to_server(AttentionServicer(runtime), server)
    return Registration([pb.DESCRIPTOR.services_by_name["AttentionService"].full_name])
