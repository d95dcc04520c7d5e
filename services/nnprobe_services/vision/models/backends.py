"""Inference backends with one interface: ONNX Runtime for ``model.onnx``, PyTorch for ``model.pt2`` and the
built-in classifiers.

A backend maps (N, 3, H, W) float32 RGB pixels in [0, 1] to (N, classes) float32 logits on the CPU
(``predict``); the model's own input convention (value range, channel order, mean and std from its
``config.yaml``) is applied inside (``PixelTransform``). ``differentiable()`` gives a PyTorch module with the
same mapping for gradients (attacks, effective receptive fields): the loaded program for ``.pt2``; for ONNX a
conversion of the graph with onnx2torch, refused with ``FailedPrecondition`` naming the first op it cannot
convert.

Devices: ONNX Runtime uses the CUDA execution provider when the server's device is a GPU and the installed
onnxruntime has it, else the CPU execution provider; PyTorch runs on the server's device.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from nnprobe_services.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("nnprobe.vision.backends")


class PixelTransform(nn.Module):
    """``(x * scale)[:, order] - mean) / std`` for [0, 1] RGB pixels ``x`` (N, 3, H, W), then permuted to
    (N, H, W, 3) for an ``nhwc`` input and, for a ``uint8`` input, rounded to integers 0..255 (clamped) and
    cast: the tensor the network takes (``config.yaml``'s ``input.layout`` and ``input.dtype``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        scale: float,
        bgr: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        nhwc: bool = False,
        uint8: bool = False,
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self.bgr = bool(bgr)
        self.nhwc = bool(nhwc)
        self.uint8 = bool(uint8)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels * self.scale
        if self.bgr:
            x = x.flip(1)
        x = (x - self.mean) / self.std
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        if self.uint8:  # no gradient flows through the cast (``LoadedModel.module`` refuses such models)
            x = x.round().clamp(0, 255).to(torch.uint8)
        return x

    def numpy(self, pixels: np.ndarray) -> np.ndarray:
        """The same mapping on a float32 array, without autograd (ONNX Runtime's input)."""
        x = pixels * np.float32(self.scale) if self.scale != 1.0 else pixels
        if self.bgr:
            x = x[:, ::-1]
        mean = self.mean.numpy()
        std = self.std.numpy()
        if not (mean == 0).all() or not (std == 1).all():
            x = (x - mean) / std
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        if self.uint8:
            return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
        return np.ascontiguousarray(x, dtype=np.float32)


def identity_transform() -> PixelTransform:
    """The transform of a model that takes [0, 1] RGB pixels as they are."""
    return PixelTransform(scale=1.0, bgr=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class InferenceBackend(Protocol):
    """What classification and attacks need of a served model."""

    #: ``onnxruntime`` or ``pytorch``.
    name: str
    #: Where it runs, e.g. ``cpu``, ``cuda:0``.
    device: str

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 pixels in [0, 1] -> (N, classes) float32 logits on the CPU."""
        ...

    def differentiable(self) -> nn.Module:
        """A module with the same mapping that PyTorch can differentiate, on ``torch_device``."""
        ...


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA first when asked for and installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` over ``path`` (graph optimisations on, threads = cores)."""

    name = "onnxruntime"

    def __init__(
        self, path: Path, transform: PixelTransform, device: torch.device, *, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.transform = transform
        self.torch_device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: the server's cores also run PyTorch (gradients,
        # the other models), decoding and gRPC, and a spinning pool slows a PyTorch pass that follows a run
        # by about a quarter on two cores (measured in bench/adversarial.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for every load failure
            raise InvalidArgument(
                f"onnxruntime cannot load the model: {str(error)[:300]}", field="file"
            ) from None
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidArgument(
                f"the ONNX graph takes {len(inputs)} inputs; an image classifier takes one (N, 3, H, W)",
                field="file",
            )
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._module: nn.Module | None = None
        self._lock = threading.Lock()

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        array = self.transform.numpy(pixels.detach().cpu().numpy().astype(np.float32, copy=False))
        (logits, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    def differentiable(self) -> nn.Module:
        with self._lock:
            if self._module is None:
                self._module = onnx_to_torch(self.path, self.transform, self.torch_device)
            return self._module


def unconvertible_ops(model) -> list[str]:
    """The ops of ``model``'s main graph that onnx2torch has no converter for, as ``domain::Op (opset N)``."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    missing: list[str] = []
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        version = opsets.get(domain, opsets.get("ai.onnx", 0))
        try:
            get_converter(node.op_type, version, node.domain or "")
        except NotImplementedError:
            label = f"{node.op_type} (opset {version})" if not node.domain else f"{domain}::{node.op_type}"
            if label not in missing:
                missing.append(label)
    return missing


def onnx_to_torch(path: Path, transform: PixelTransform, device: torch.device) -> nn.Module:
    """onnx2torch's conversion of the model at ``path`` behind ``transform``; ``FailedPrecondition`` naming
    the ops that do not convert."""
    import onnx
    from onnx2torch import convert

    model = onnx.load_model(str(path), load_external_data=True)
    missing = unconvertible_ops(model)
    if missing:
        raise FailedPrecondition(
            f"gradients of this ONNX model need a PyTorch conversion, and onnx2torch cannot convert "
            f"{', '.join(missing)}; upload the network as a torch.export archive (model.pt2) instead",
            field="model",
        )
    try:
        network = convert(model)
    except Exception as error:  # onnx2torch raises NotImplementedError and others for attribute variants
        raise FailedPrecondition(
            f"onnx2torch cannot convert this ONNX model: {error}", field="model"
        ) from None
    module = nn.Sequential(transform, network)
    return module.eval().requires_grad_(False).to(device)


class TorchBackend:
    """A PyTorch module (pixel space) run with ``torch.inference_mode``; ``channels_last`` on request."""

    name = "pytorch"

    def __init__(self, module: nn.Module, device: torch.device, *, channels_last: bool = False) -> None:
        self.module = module.requires_grad_(False).to(device)  # callers put it in eval mode
        self.torch_device = device
        self.device = str(device)
        self.channels_last = channels_last
        self._fast = module
        if channels_last:
            self._fast = module.to(memory_format=torch.channels_last)

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.torch_device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._fast(x).float().cpu()

    def differentiable(self) -> nn.Module:
        return self.module


def export_onnx(module: nn.Module, path: Path, side: tuple[int, int], *, tolerance: float = 1e-4) -> float:
    """Export a pixel-space classifier to ONNX (TorchScript exporter, opset 17, dynamic batch) at ``path``,
    written atomically, after checking ONNX Runtime's logits against ``module``'s on a fixed input.

    Returns the largest absolute logit difference; raises ``ValueError`` when it exceeds ``tolerance``
    (nothing is written then). The export settings follow ONNX Runtime's guidance for CNN classifiers.
    """
    import onnxruntime as ort

    module = module.eval().cpu()
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(2, 3, *side, generator=generator)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (sample,),
                str(partial),
                dynamo=False,
                opset_version=17,
                input_names=["pixels"],
                output_names=["logits"],
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            )
            expected = module(sample).numpy()
        session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
        (actual,) = session.run(["logits"], {"pixels": sample.numpy()})
        difference = float(np.abs(actual - expected).max())
        if difference > tolerance:
            raise ValueError(f"ONNX logits differ from PyTorch's by {difference:.3g} > {tolerance:g}")
        partial.replace(path)
        return difference
    finally:
        partial.unlink(missing_ok=True)
