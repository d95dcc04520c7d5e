"""The receptive-field request and result as plain values (no gRPC): what ``workflow.compute`` takes and
answers, and the limits on its back-propagation checks. Sizes are (height, width) in input pixels; ``origin``
is where the first pixel's centre lies, a fraction of a pixel from its edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from nnprobe_services.vision.images import decode
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import boxes, empirical
from nnprobe_services.vision.receptive_fields.graph import GraphField
from nnprobe_services.vision.receptive_fields.tiling import TilingPlan

#: Largest input (height * width) the back-propagation checks run on.
MAX_EMPIRICAL_PIXELS = 1024 * 1024
#: Most random inputs one effective-field estimate may average.
MAX_ERF_SAMPLES = 256
DEFAULT_ERF_SAMPLES = 16

#: A unit of a feature map: (layer name, x (column), y (row)), both 0-based.
Unit = tuple[str, int, int]


#: Most images one effective-field estimate may average.
MAX_ERF_IMAGES = 64


@dataclass(frozen=True)
class EffectiveOptions:
    """The effective field of ``unit`` (default: the end point's centre unit), averaged over
    ``num_samples`` N(0, 1) inputs drawn from ``seed`` (or over ``images``), through ``weights``:
    ``random`` (drawn from ``weight_seed``), ``trained`` (a repository model's own) or "" (trained for a
    repository model, random otherwise)."""

    num_samples: int = DEFAULT_ERF_SAMPLES
    seed: int = 0
    weight_seed: int = 0
    unit: Unit | None = None
    weights: str = ""
    images: tuple[decode.ImageInput, ...] = ()


@dataclass(frozen=True)
class TilingOptions:
    """An overlap-tile plan for tiles of ``tile`` (height, width) input pixels; ``prove``: run the network
    tiled and whole and report the largest difference."""

    tile: tuple[int, int]
    prove: bool = False


@dataclass(frozen=True)
class FieldRequest:
    """Exactly one of ``layers`` (a chain, in order) and ``model`` (a model name, or a label when ``onnx``
    holds a serialised ONNX model) is given. ``strict``: refuse misaligned merges and global context.

    ``input_size`` None: the plot picture's size, else the model's default (required with ``layers``).
    ``end_point`` empty: the last layer (a list) or the last spatial feature map (a model). ``units`` empty
    with ``verify`` or ``plot``: the end point's centre unit. ``picture``: (H, W, C) image to draw on.
    """

    origin: Fraction = Fraction(1, 2)
    layers: list[rf.LayerSpec] | None = None
    model: str = ""
    input_size: tuple[int, int] | None = None
    end_point: str = ""
    units: list[Unit] = field(default_factory=list)
    verify: bool = False
    effective: EffectiveOptions | None = None
    plot: bool = False
    picture: decode.ImageInput | None = None
    max_elements: int = 50_000_000
    onnx: bytes = b""
    strict: bool = False
    #: A version of a model-repository ``model`` (0: its default version).
    version: int = 0
    #: Constructor options of a built-in ``model`` (``model_options.ModelOptions``), sorted by name.
    model_options: tuple[tuple[str, str], ...] = ()
    #: The overlap-tile plan of the end point's map, when asked for.
    tiling: TilingOptions | None = None
    #: Seed of random weights (``model.seed``), for the tiling proof of a named model or a layer list.
    weight_seed: int = 0

    @property
    def has_model(self) -> bool:
        return bool(self.model or self.onnx)

    @property
    def model_field(self) -> str:
        """The request field that carried the model: ``model.onnx`` for bytes, else ``model.name``."""
        return "model.onnx" if self.onnx else "model.name"

    @property
    def size_field(self) -> str:
        """The request field the input size comes from: ``input_size`` when given (or required), else the
        plot picture's field, else the model's field (the size it declares or defaults to)."""
        if self.input_size is not None or not (self.picture is not None or self.has_model):
            return "input_size"
        return self.picture.field if self.picture is not None else self.model_field


@dataclass(frozen=True)
class RepositoryModel:
    """One version of a model of the model repository: its file (``onnx`` or ``pt2``), its configured input
    size and the repository's limits on model files."""

    name: str
    version: int
    format: str
    path: Path
    input_size: tuple[int, int]
    max_nodes: int
    max_bytes: int


@dataclass(frozen=True)
class Verification:
    """Where the input gradient of one unit is non-zero, and whether that box equals the computed field."""

    box: empirical.GradientBox
    matches: bool


@dataclass(frozen=True)
class EffectiveProtocol:
    """How an effective field was measured: ``inputs`` (``normal(0, 1)`` or ``images``), their count and
    seed, the input ``resolution`` (height, width), ``weights`` (``random``/``trained``) and their seed, the
    computation's ``dtype`` and the repository ``model_version`` whose weights ran (0: none)."""

    num_samples: int
    seed: int
    inputs: str
    resolution: tuple[int, int]
    weights: str
    weight_seed: int
    dtype: str
    model_version: int = 0


@dataclass(frozen=True)
class EffectiveResult:
    """The effective field of ``unit`` (whose theoretical field is ``field``): the mean |gradient| map
    (H, W) float64, its summary and the protocol that measured it."""

    unit: Unit
    field: boxes.UnitField
    summary: empirical.EffectiveField
    protocol: EffectiveProtocol | None = None


@dataclass
class FieldResult:
    """Layer fields up to ``end_point``, unit fields in request order, and the optional extras."""

    fields: list[rf.LayerField]
    end_point: str
    input_size: tuple[int, int]
    origin: Fraction
    units: list[boxes.UnitField]
    model: str = ""
    verifications: list[Verification] = field(default_factory=list)
    verified: bool = False
    effective: EffectiveResult | None = None
    plot_png: bytes = b""
    #: For models: the capture, global context and misaligned merges (``GraphField``).
    graph: GraphField | None = None
    #: The overlap-tile plan, when asked for.
    tiling: TilingPlan | None = None
