"""A model on a remote Open Inference Protocol endpoint (KServe v2 / Triton gRPC) as a black box: its
ModelMetadata gives the image input (FP32 ``[N, 3, H, W]``) and the logits output (FP32 ``[N, classes]``);
``predict`` sends [0, 1] pixels in NCHW as ``raw_input_contents`` (little-endian float32) and reads the
logits back. Calls retry UNAVAILABLE through gRPC's retry policy (``transfer.RETRY_POLICY``: at most 5
attempts, 0.1 s to 2 s backoff); a call that still fails raises ``Unavailable`` (or ``FailedPrecondition``
for an answer of another kind) with the endpoint's message. This module speaks gRPC to the endpoint; the
evaluation core only sees ``predict``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from nnprobe.api.inference import grpc_service_pb2 as oip
from nnprobe.api.inference import grpc_service_pb2_grpc as oip_grpc

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from nnprobe_services.vision.attacks import transfer

#: The deadline of one inference call, in seconds, when the job runs (after the request has returned).
INFER_TIMEOUT_SECONDS = transfer.REMOTE_TIMEOUT_SECONDS
#: Images per ModelInfer request.
MAX_BATCH = 64
#: Why an endpoint address cannot be used (empty when it can): the transfer addresses' check.
address_problem = transfer.address_problem


@dataclass(frozen=True)
class Signature:
    """The endpoint model's image input ``input_name`` of ``height`` x ``width`` and its logits output."""

    input_name: str
    height: int
    width: int
    output_name: str
    classes: int


def channel_options() -> list[tuple[str, object]]:
    """gRPC's retry policy on UNAVAILABLE for the inference service, bounded reconnection backoff."""
    config = {
        "methodConfig": [
            {"name": [{"service": "inference.GRPCInferenceService"}], "retryPolicy": transfer.RETRY_POLICY}
        ]
    }
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.initial_reconnect_backoff_ms", transfer.INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", transfer.INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", transfer.MAX_RECONNECT_BACKOFF_MS),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


def _failure(address: str, what: str, error: grpc.RpcError) -> Exception:
    code = error.code() if isinstance(error, grpc.Call) else None
    detail = error.details() if isinstance(error, grpc.Call) else str(error)
    message = f"remote model at {address}: {what} failed with {getattr(code, 'name', code)}: {detail}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message, field="remote.model_name")
    return FailedPrecondition(message, field="remote")


def _signature(meta: oip.ModelMetadataResponse) -> Signature:
    """The image input and logits output of ``meta``; ``FailedPrecondition`` naming the input otherwise."""
    images = [t for t in meta.inputs if len(t.shape) == 4 and t.shape[1] == 3]
    fp32 = [t for t in images if t.datatype == "FP32" and t.shape[2] > 0 and t.shape[3] > 0]
    if not fp32:
        seen = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in meta.inputs) or "none"
        raise FailedPrecondition(
            f"remote model {meta.name!r} has no FP32 [N, 3, H, W] input with a fixed H and W "
            f"(inputs: {seen}); only [0, 1] pixels as FP32 NCHW are sent",
            field="remote",
        )
    outputs = [t for t in meta.outputs if t.datatype == "FP32" and len(t.shape) == 2 and t.shape[1] > 1]
    named = [t for t in outputs if t.name == "logits"]
    if not outputs:
        raise FailedPrecondition(
            f"remote model {meta.name!r} has no FP32 [N, classes] output to read logits from", field="remote"
        )
    out = (named or outputs)[0]
    return Signature(fp32[0].name, int(fp32[0].shape[2]), int(fp32[0].shape[3]), out.name, int(out.shape[1]))


class RemoteModel:
    """The model ``name`` (version ``version``, "" for its default) at ``address`` (checked by
    ``address_problem``). ``metadata_timeout`` bounds the ModelMetadata call (the request's remaining
    deadline); ``close`` ends the channel."""

    def __init__(self, address: str, name: str, version: str = "", *, metadata_timeout: float | None = None):
        problem = address_problem(address)
        if problem:
            raise InvalidArgument(problem, field="remote.address")
        self.address, self.name, self.version = address, name, version
        self.queries = 0
        self._channel = grpc.insecure_channel(address, options=channel_options())
        self._stub = oip_grpc.GRPCInferenceServiceStub(self._channel)
        timeout = transfer.call_timeout(metadata_timeout)
        try:
            meta = self._stub.ModelMetadata(
                oip.ModelMetadataRequest(name=name, version=version), timeout=timeout, wait_for_ready=False
            )
        except grpc.RpcError as error:
            self.close()
            raise _failure(address, "ModelMetadata", error) from None
        self.signature = _signature(meta)

    def close(self) -> None:
        self._channel.close()

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) float32 on ``pixels``' device for ``pixels`` (N, 3, H, W) float in [0, 1],
        in ModelInfer requests of at most ``MAX_BATCH`` images; ``queries`` grows by N. Raises
        ``Unavailable`` when the endpoint cannot be reached after the retries."""
        rows = [self._infer(part) for part in torch.split(pixels.detach(), MAX_BATCH)]
        self.queries += len(pixels)
        return torch.from_numpy(np.concatenate(rows)).to(pixels.device)

    def _infer(self, part: torch.Tensor) -> np.ndarray:
        array = np.ascontiguousarray(part.float().cpu().numpy(), dtype="<f4")
        sig = self.signature
        request = oip.ModelInferRequest(model_name=self.name, model_version=self.version)
        request.inputs.add(name=sig.input_name, datatype="FP32", shape=list(array.shape))
        request.outputs.add(name=sig.output_name)
        request.raw_input_contents.append(array.tobytes())
        try:
            reply = self._stub.ModelInfer(request, timeout=INFER_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            raise _failure(self.address, "ModelInfer", error) from None
        expected = len(array) * sig.classes
        raw = reply.raw_output_contents[0] if reply.raw_output_contents else b""
        if len(raw) != 4 * expected:
            raise FailedPrecondition(
                f"remote model at {self.address} answered {len(raw)} bytes of {sig.output_name}, "
                f"expected {4 * expected} (FP32 [{len(array)}, {sig.classes}])",
                field="remote",
            )
        return np.frombuffer(raw, dtype="<f4").reshape(len(array), sig.classes).copy()
