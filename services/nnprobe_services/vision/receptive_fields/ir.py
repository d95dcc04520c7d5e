"""The graph the receptive-field engine reads: one form for every front-end (torch.export, torch.fx, ONNX).

Each node carries a typed operation (a frozen dataclass per operation family, below) with what the field
arithmetic and the back-propagation proof need, its data inputs (nodes that depend on the input image;
parameters and constants are folded into the operation) and the shape of its output. Plain data: it pickles
between processes (the trace worker sends a ``Capture`` back to the server process).

The front-ends lower their operators onto these classes (``frontends.torch_lowerings``,
``frontends.onnx_lowerings``); the propagation (``propagate``) and the transparent twin (``twin``) dispatch on
the class. ``OPS`` names the vocabulary: each class's ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nnprobe_services.vision.receptive_fields.arithmetic import Window


@dataclass(frozen=True)
class Operation:
    """What a node does. ``kind``: the operation's short name (``conv``, ``pool``, ...)."""

    kind: ClassVar[str] = ""


@dataclass(frozen=True)
class Input(Operation):
    """The input image (N, C, H, W)."""

    kind: ClassVar[str] = "input"
    channels: int


# -- windows -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv(Operation):
    """A 2-d convolution: its (height, width) windows and channels."""

    kind: ClassVar[str] = "conv"
    windows: tuple[Window, Window]
    out_channels: int
    in_channels: int
    groups: int


@dataclass(frozen=True)
class ConvTranspose(Operation):
    """A 2-d transposed convolution: (height, width) windows (kernel, stride, dilation, padding before and
    after, as the operator crops its output), ``output_padding`` added after, (height, width); channels.
    Output o reads input i where o = i * stride - pad_before + dilation * t (``varying.transposed_taps``)."""

    kind: ClassVar[str] = "conv_transpose"
    windows: tuple[Window, Window]
    output_padding: tuple[int, int]
    out_channels: int
    in_channels: int
    groups: int


@dataclass(frozen=True)
class Pool(Operation):
    """Pooling with fixed windows; ``pool``: ``max``, ``avg`` or ``lp``."""

    kind: ClassVar[str] = "pool"
    windows: tuple[Window, Window]
    pool: str


@dataclass(frozen=True)
class AdaptivePool(Operation):
    """Pooling to a fixed output size, (height, width); None keeps that axis's size."""

    kind: ClassVar[str] = "adaptive_pool"
    output_size: tuple[int | None, int | None]
    pool: str


@dataclass(frozen=True)
class Pad(Operation):
    """Padding; ``pads`` in ``F.pad`` order (last axis first, before then after); ``mode``: ``zeros``,
    ``reflect``, ``replicate`` (or another mode, which maps to no field)."""

    kind: ClassVar[str] = "pad"
    pads: tuple[int, ...]
    mode: str


# -- resizing ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upsample(Operation):
    """Resizing (the output size is read from the shapes). ``mode``: ``nearest``, ``linear`` or ``cubic``.
    Nearest: output unit o copies the input unit that ``coordinate_mode`` and ``nearest_mode`` name, as ONNX
    ``Resize`` defines them (``resize_index``): PyTorch's ``nearest`` is (``asymmetric``, ``floor``),
    ``nearest-exact`` (``tf_half_pixel_for_nn``, ``floor``). Linear and cubic read the taps of
    ``resize_weights`` with a non-zero weight; ``formulas``: ``torch`` (PyTorch's kernels: align_corners is
    ``coordinate_mode`` ``align_corners``, otherwise ``half_pixel`` clamped as PyTorch does) or ``onnx``
    (ONNX ``Resize``). ``scales``: the (height, width) factors the operator uses; None: output / input
    size. ``antialias``: a low-pass filter widened by the factor when downsampling; ``cubic_coeff_a`` and
    ``exclude_outside`` as ONNX defines them."""

    kind: ClassVar[str] = "upsample"
    coordinate_mode: str = "asymmetric"
    nearest_mode: str = "floor"
    scales: tuple[float, float] | None = None
    mode: str = "nearest"
    formulas: str = "onnx"
    antialias: bool = False
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False


@dataclass(frozen=True)
class PixelShuffle(Operation):
    """Depth to space by ``factor``."""

    kind: ClassVar[str] = "pixel_shuffle"
    factor: int


@dataclass(frozen=True)
class PixelUnshuffle(Operation):
    """Space to depth by ``factor``."""

    kind: ClassVar[str] = "pixel_unshuffle"
    factor: int


# -- merges: any number of data inputs -----------------------------------------------------------------------
@dataclass(frozen=True)
class Merge(Operation):
    """An operation whose data inputs join (broadcast and combined, or concatenated)."""


@dataclass(frozen=True)
class Pointwise(Merge):
    """Point-wise: activations, arithmetic between tensors (broadcast), copies, inference normalisation."""

    kind: ClassVar[str] = "elementwise"


@dataclass(frozen=True)
class Concat(Merge):
    """Concatenation along ``dim``."""

    kind: ClassVar[str] = "cat"
    dim: int
    #: Where each data input starts along ``dim`` when constants are joined too (a class token before the
    #: patch tokens); empty: the data inputs alone, in order.
    starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Stack(Merge):
    """Stacking along a new axis ``dim``."""

    kind: ClassVar[str] = "stack"
    dim: int


# -- layout --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice(Operation):
    """``[start:end:step]`` along ``dim`` (a piece of a split too)."""

    kind: ClassVar[str] = "slice"
    dim: int
    start: int
    end: int
    step: int


@dataclass(frozen=True)
class Split(Operation):
    """A split or a normalisation with several results: its pieces (``Slice``) say what they take."""

    kind: ClassVar[str] = "tuple"


@dataclass(frozen=True)
class Select(Operation):
    """Index ``index`` along ``dim``, which the output drops (``x[:, 0]``, a piece of ``unbind``)."""

    kind: ClassVar[str] = "select"
    dim: int
    index: int


@dataclass(frozen=True)
class Permute(Operation):
    """Axis ``i`` of the output is axis ``dims[i]`` of the input."""

    kind: ClassVar[str] = "permute"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Reshape(Operation):
    """A reshape (view, flatten, squeeze...); the output shape is the node's."""

    kind: ClassVar[str] = "reshape"


# -- over channels or the whole map --------------------------------------------------------------------------
@dataclass(frozen=True)
class Reduce(Operation):
    """A reduction over ``dims``; ``reduction``: the operator's own name (``mean``, ``ReduceMean``)."""

    kind: ClassVar[str] = "reduce"
    dims: tuple[int, ...]
    keepdim: bool
    reduction: str = ""


@dataclass(frozen=True)
class Linear(Operation):
    """A linear layer over the last axis."""

    kind: ClassVar[str] = "linear"
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Norm(Operation):
    """A normalisation with statistics over ``dims``."""

    kind: ClassVar[str] = "norm"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Softmax(Operation):
    """A softmax along ``dim``."""

    kind: ClassVar[str] = "softmax"
    dim: int


@dataclass(frozen=True)
class MatMul(Operation):
    """A product of two computed tensors, ``a @ b``: over ``a``'s last axis and ``b``'s second-to-last
    (attention scores and their use, global-context pooling)."""

    kind: ClassVar[str] = "matmul"


@dataclass(frozen=True)
class Attention(Operation):
    """Scaled dot-product attention of computed queries, keys and values (``(..., tokens, features)``):
    every query mixes the values at every key position."""

    kind: ClassVar[str] = "attention"


@dataclass(frozen=True)
class Unmappable(Operation):
    """An operation that maps to no receptive field; ``why`` says which and why."""

    kind: ClassVar[str] = "unsupported"
    why: str


#: Every operation class, and the vocabulary: their kinds.
OPERATIONS: tuple[type[Operation], ...] = (
    Split,
    Input,
    Conv,
    ConvTranspose,
    Pool,
    AdaptivePool,
    Pad,
    Pointwise,
    Concat,
    Stack,
    Slice,
    Select,
    Permute,
    Reshape,
    Reduce,
    Linear,
    Norm,
    Softmax,
    MatMul,
    Attention,
    Upsample,
    PixelShuffle,
    PixelUnshuffle,
    Unmappable,
)
OPS = tuple(cls.kind for cls in OPERATIONS)


@dataclass(frozen=True)
class GraphNode:
    """One operation. ``label``: the front-end's own name for it (``Conv2d``, ``aten.add``, ``Conv``);
    ``module``: the module path that ran it (empty when unknown); ``modules``: every enclosing module path,
    outermost first; ``shape``: the output shape (batch 1), None when not a tensor."""

    name: str
    operation: Operation
    inputs: tuple[str, ...]
    shape: tuple[int, ...] | None
    label: str = ""
    module: str = ""
    modules: tuple[str, ...] = ()
    #: The front-end's own name of the node (the ATen graph's node, the ONNX node's output tensor).
    source: str = ""

    @property
    def op(self) -> str:
        """The operation's kind (``conv``, ``elementwise``...)."""
        return self.operation.kind


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

    @property
    def channels(self) -> int:
        """The input image's channels (3 when the input node does not say)."""
        first = self.nodes[0].operation
        return first.channels if isinstance(first, Input) else 3
