"""A repository model's input tensor against its ``config.yaml``: the graph's one input must be a rank-4
image tensor in the declared ``input.layout`` (``nchw``: (N, 3, H, W); ``nhwc``: (N, H, W, 3)) and
``input.dtype`` (``float32`` or ``uint8``), checked at upload before the test forward pass, so a mismatch is
refused naming the input, what it takes and the config key to set.
"""

from __future__ import annotations

from typing import Any

import torch

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import cap, quote
from nnprobe_services.vision.models.config import ModelConfig

#: ONNX Runtime's type names and torch's dtypes as config.yaml's ``input.dtype`` names.
ONNX_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
TORCH_TYPES = {torch.float32: "float32", torch.uint8: "uint8"}

Dim = int | str


def onnx_input(session: Any) -> tuple[str, tuple[Dim, ...], str]:
    """(name, shape with symbolic dimensions as names, dtype) of an ONNX Runtime session's first input."""
    spec = session.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) else str(d or "?") for d in spec.shape)
    kind = str(spec.type)
    return spec.name, shape, ONNX_TYPES.get(kind, kind.removeprefix("tensor(").removesuffix(")"))


def pt2_input(program: torch.export.ExportedProgram) -> tuple[str, tuple[Dim, ...], str] | None:
    """The same for a ``torch.export`` program's one user input (None when it has not exactly one)."""
    names = [str(name) for name in program.graph_signature.user_inputs]
    if len(names) != 1:
        return None
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0]), None)
    value = getattr(node, "meta", {}).get("val")
    if not isinstance(value, torch.Tensor):
        return None
    shape = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
    return names[0], shape, TORCH_TYPES.get(value.dtype, str(value.dtype).removeprefix("torch."))


def declared(config: ModelConfig) -> str:
    """The input config.yaml declares, e.g. ``(N, 3, 224, 224) float32 (input.layout: nchw, ...)``."""
    size = f"{config.height}, {config.width}"
    shape = f"(N, {size}, 3)" if config.layout == "nhwc" else f"(N, 3, {size})"
    return f"{shape} {config.dtype} (input.layout: {config.layout}, input.dtype: {config.dtype})"


def _fix(shape: tuple[Dim, ...], dtype: str, config: ModelConfig) -> str:
    """What to set in config.yaml for a graph input of ``shape`` and ``dtype``."""
    if len(shape) != 4:
        return "an image classifier takes one rank-4 tensor, (N, 3, H, W) or (N, H, W, 3)"
    if dtype != config.dtype:
        if dtype in ONNX_TYPES.values():
            return f"set input.dtype: {dtype}"
        return f"an image classifier takes float32 or uint8 pixels, not {dtype}"
    channels, spatial = (3, (1, 2)) if config.layout == "nhwc" else (1, (2, 3))
    if shape[channels] != 3:
        other = "nhwc" if config.layout == "nchw" else "nchw"
        if shape[3 if other == "nhwc" else 1] == 3:
            return f"set input.layout: {other}"
        return f"dimension {channels} must be the 3 colour channels in input.layout: {config.layout}"
    for axis, key, want in zip(spatial, ("height", "width"), (config.height, config.width), strict=True):
        if isinstance(shape[axis], int) and shape[axis] != want:
            return f"set input.{key}: {shape[axis]}"
    return ""


def check(found: tuple[str, tuple[Dim, ...], str] | None, config: ModelConfig, field: str) -> None:
    """``InvalidArgument`` on ``field`` (the config) when the graph's input is not the declared one."""
    if found is None:
        return
    name, shape, dtype = found
    fix = _fix(shape, dtype, config)
    if fix:
        dims = ", ".join(str(d) for d in shape)
        raise InvalidArgument(
            f"the model's input {quote(name, 60)} takes ({dims}) {dtype}, but config.yaml declares "
            f"{declared(config)}; {fix}",
            field=field,
        )


def probe_failure(
    error: Exception, shape: tuple[int, ...], config: ModelConfig, field: str
) -> InvalidArgument:
    """A clear refusal for a test forward pass that failed: the tensor fed, the declared input and the
    engine's reason in one line (ONNX Runtime's ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` prefix
    dropped)."""
    reason = " ".join(str(error).split())
    if reason.startswith("[ONNXRuntimeError]"):
        reason = reason.split(" : ", 3)[-1]
    dims = ", ".join(str(d) for d in shape)
    return InvalidArgument(
        f"the model does not run on a ({dims}) {config.dtype} input, the config's input "
        f"{declared(config)}: {cap(reason, 200)}",
        field=field,
    )
