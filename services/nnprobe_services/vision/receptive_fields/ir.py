"""The graph the receptive-field engine reads: one form for every front-end (torch.export, torch.fx, ONNX).

Each node names what it does in a small vocabulary (``OPS``) with the attributes the field arithmetic and the
back-propagation proof need, its data inputs (nodes that depend on the input image; parameters and constants
are folded into the attributes) and the shape of its output. Plain data: it pickles between processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The vocabulary. ``attrs`` per op:
#: input: channels · conv: windows, in_channels, out_channels, groups · pool: windows, pool (max/avg/lp)
#: adaptive_pool: output_size, pool · pad: pads (F.pad order, last axis first), mode (zeros/reflect/replicate)
#: elementwise: (any number of data inputs, broadcast) · cat, stack: dim · slice: dim, start, end, step
#: permute: dims · reshape: (the output shape) · reduce: dims, keepdim · linear: in_features, out_features
#: norm: dims (normalised over) · softmax: dim · upsample: factor (h, w) · pixel_shuffle / pixel_unshuffle:
#: factor · tuple: a split or a normalisation with several results (its ``slice`` pieces follow) ·
#: unsupported: why.
OPS = (
    "tuple",
    "input",
    "conv",
    "pool",
    "adaptive_pool",
    "pad",
    "elementwise",
    "cat",
    "stack",
    "slice",
    "permute",
    "reshape",
    "reduce",
    "linear",
    "norm",
    "softmax",
    "upsample",
    "pixel_shuffle",
    "pixel_unshuffle",
    "unsupported",
)


@dataclass(frozen=True)
class GraphNode:
    """One operation. ``label``: the front-end's own name for it (``Conv2d``, ``aten.add``, ``Conv``);
    ``module``: the module path that ran it (empty when unknown); ``modules``: every enclosing module path,
    outermost first; ``shape``: the output shape (batch 1), None when not a tensor."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...] | None
    attrs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    module: str = ""
    modules: tuple[str, ...] = ()
    #: The front-end's own name of the node (the ATen graph's node, the ONNX node's output tensor).
    source: str = ""


@dataclass(frozen=True)
class Capture:
    """A captured network at one input size: nodes in topological order, the input first.

    ``frontend``: ``torch.export``, ``torch.fx`` or ``onnx``; ``final_stride``: the reduction of the last
    feature map as the model declares it (None when it does not); ``top_modules``: top-level module names.
    """

    model: str
    nodes: tuple[GraphNode, ...]
    input_size: tuple[int, int]
    frontend: str
    final_stride: int | None = None
    top_modules: tuple[str, ...] = ()

    def node(self, name: str) -> GraphNode:
        return next(n for n in self.nodes if n.name == name)
