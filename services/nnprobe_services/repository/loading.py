"""Loading a repository model file as a PyTorch module every core can run, differentiate and walk.

* ``.pt2`` (``torch.export.save``): checked by ``artifacts.load_pt2`` (no unpickling, ATen and prims
  operators only), then ``ExportedProgram.module()``: an ``fx.GraphModule`` that takes the inputs the program
  was exported with (nested tuples included, as ``nn.LSTMCell``'s ``(x, (h, c))``).
* ``.onnx``: checked by ``artifacts.check_onnx`` (node and byte limits, external data inside the model's
  folder, ``onnx.checker``), then converted by onnx2torch into an ``fx.GraphModule`` taking the graph's inputs
  in order.

Both are then cast to the requested floating-point ``dtype``: parameters, buffers and tensor constants, and
every floating dtype the graph names (``aten._to_copy(x, dtype=torch.float32)``, an ONNX ``Cast`` to float),
so a float32 export evaluated in float64 computes in float64 throughout. Integer tensors (token ids, shapes,
split sizes) keep their dtype. An ONNX model is put in evaluation mode; an exported program keeps the mode
it was captured in (``torch.export`` refuses ``eval()``).

Every refusal is ``InvalidArgument`` naming ``field`` (the request field or ``file``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository import artifacts
from nnprobe_services.repository.quoting import cap

#: Limits used when a caller gives none (the same defaults as the services' settings).
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_NODES = 100_000
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def load_module(
    path: Path,
    *,
    dtype: torch.dtype,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    field: str = "file",
) -> torch.nn.Module:
    """The model at ``path`` (``model.pt2`` or ``model.onnx``, format read from the bytes) as a module
    whose floating-point tensors and computations are in ``dtype``.

    Raises ``InvalidArgument`` naming ``field`` when the file is not a safe ONNX model or ``torch.export``
    archive (pickles, TorchScript, operators outside ATen/prims, limits exceeded) or onnx2torch cannot
    convert one of its operators; ``ValueError`` when ``dtype`` is not a floating-point dtype."""
    return load_graph(path, dtype=dtype, max_nodes=max_nodes, max_bytes=max_bytes, field=field)


def load_graph(
    path: Path,
    *,
    dtype: torch.dtype,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    field: str = "file",
) -> fx.GraphModule:
    """As ``load_module``, always an ``fx.GraphModule`` whose ``graph.nodes`` are in execution order
    (placeholders first, then every operation as the model runs it, then the output)."""
    if dtype not in FLOATING:
        raise ValueError(f"dtype must be one of {FLOATING}, got {dtype}")
    path = Path(path)
    fmt = artifacts.detect_format(path, field)
    if fmt == "pt2":
        program = artifacts.load_pt2(path, max_nodes=max_nodes, max_bytes=max_bytes, field=field)
        module = program.module()
    else:
        artifacts.check_onnx(path, max_nodes=max_nodes, max_bytes=max_bytes, field=field)
        module = _convert_onnx(path, field).eval()  # an exported program was captured in its mode
    if not isinstance(module, fx.GraphModule):  # both paths give one; a future torch might not
        module = fx.symbolic_trace(module)
    return cast(module, dtype)


def _convert_onnx(path: Path, field: str) -> fx.GraphModule:
    """onnx2torch's ``GraphModule`` of the (already checked) ONNX model at ``path``."""
    import onnx
    import onnx2torch

    try:
        model = onnx.load_model(str(path), load_external_data=True)
        return onnx2torch.convert(model)
    except NotImplementedError as error:
        raise InvalidArgument(
            f"uses an ONNX operator onnx2torch cannot convert ({cap(str(error), 200)}); export with "
            "torch.onnx.export(..., opset_version=17) or as a torch.export archive (model.pt2)",
            field=field,
        ) from None
    except Exception as error:  # any conversion failure of client bytes
        raise InvalidArgument(
            f"could not be converted to PyTorch ({type(error).__name__}: {cap(str(error), 200)})", field=field
        ) from None


def _retyped(value: object, dtype: torch.dtype) -> object:
    """``value`` with every floating dtype in it (nested in tuples, lists, dicts) replaced by ``dtype``."""
    if isinstance(value, torch.dtype):
        return dtype if value in FLOATING else value
    if isinstance(value, tuple | list):
        return type(value)(_retyped(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _retyped(item, dtype) for key, item in value.items()}
    return value


def cast(module: fx.GraphModule, dtype: torch.dtype) -> fx.GraphModule:
    """``module`` (changed in place) computing in ``dtype``: parameters, buffers, tensor constants held as
    plain attributes, dtypes named by graph nodes and onnx2torch ``Cast`` targets."""
    module.to(dtype)
    for sub in module.modules():
        for name, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor) and value.dtype in FLOATING and value.dtype != dtype:
                setattr(sub, name, value.to(dtype))
            elif name == "torch_dtype" and isinstance(value, torch.dtype):  # onnx2torch's OnnxCast
                setattr(sub, name, _retyped(value, dtype))
    changed = False
    for node in module.graph.nodes:
        args, kwargs = _retyped(node.args, dtype), _retyped(dict(node.kwargs), dtype)
        if args != node.args or kwargs != dict(node.kwargs):
            node.args, node.kwargs = args, kwargs  # type: ignore[assignment]
            changed = True
    if changed:
        module.recompile()
    return module
