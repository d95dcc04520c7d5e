"""Client for VisionService: receptive fields, ImageNet classification and adversarial examples."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe._client import DEFAULT, BaseClient, _Default
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

_KINDS = {"conv": pb.LAYER_KIND_CONV, "pool": pb.LAYER_KIND_POOL, "other": pb.LAYER_KIND_OTHER}
_KIND_NAMES = {
    pb.LAYER_KIND_INPUT: "input",
    pb.LAYER_KIND_CONV: "conv",
    pb.LAYER_KIND_POOL: "pool",
    pb.LAYER_KIND_OTHER: "other",
    pb.LAYER_KIND_MERGE: "merge",
}

Pair = int | Sequence[int]


@dataclass(frozen=True)
class Layer:
    """One layer of a layer list.

    ``kernel``, ``stride``, ``dilation``: an int or (h, w). ``stride`` defaults to the kernel for ``pool``
    layers (as in PyTorch) and to 1 otherwise. ``padding``: an int, (h, w), (top, bottom, left, right),
    ``"same"`` (TensorFlow's SAME) or ``"valid"``.
    """

    name: str
    kernel: Pair
    stride: Pair | None = None
    padding: Pair | str = 0
    dilation: Pair | None = None
    kind: str = "conv"
    ceil_mode: bool = False


@dataclass
class AxisField:
    """Geometry of a layer along one axis, in input pixels."""

    size: int
    jump: int
    receptive_size: int
    start: float
    effective_padding: float


@dataclass
class LayerField:
    """Receptive-field geometry of one layer."""

    name: str
    kind: str
    operation: str
    module: str
    inputs: list[str]
    height: AxisField
    width: AxisField
    #: Padding applied (top, bottom, left, right).
    padding: tuple[int, int, int, int]


@dataclass
class Interval:
    """[start, end] along one axis, with its centre."""

    start: float
    center: float
    end: float


@dataclass
class Verification:
    """Rows and columns (first, last) of non-zero input gradient, and whether they equal the analytic box."""

    rows: tuple[int, int]
    columns: tuple[int, int]
    matches: bool


@dataclass
class UnitField:
    """The field of one unit (x = column, y = row of its layer's output)."""

    layer: str
    x: int
    y: int
    vertical: Interval
    horizontal: Interval
    vertical_clipped: Interval
    horizontal_clipped: Interval
    #: Input pixel rows (first, last; 0-based, inclusive) connected to the unit.
    rows: tuple[int, int]
    #: Input pixel columns connected to the unit.
    columns: tuple[int, int]
    verification: Verification | None = None


@dataclass
class EffectiveField:
    """Effective receptive field (Luo et al., 2016) of one unit."""

    layer: str
    x: int
    y: int
    #: Mean |dy/dx| over samples and input channels, (height, width) float64.
    gradient_map: np.ndarray
    num_samples: int
    sigma_height: float
    sigma_width: float
    center_vertical: float
    center_horizontal: float
    pixels_for_95_percent: int
    theoretical_pixels: int
    share_for_95_percent: float
    mass_inside_field: float


@dataclass
class ReceptiveFieldResult:
    """Outcome of ``compute_receptive_field``."""

    layers: list[LayerField]
    end_point: str
    input_size: tuple[int, int]
    first_pixel_center: float
    units: list[UnitField]
    verified: bool
    effective_field: EffectiveField | None
    #: PNG bytes when a plot was asked for.
    plot_png: bytes
    model: str
    raw: Any = field(repr=False, default=None)
    #: The layer after which the end point's units see the whole input ("" when none): the fields are then
    #: local ones. ``global_context_module``: its module path.
    global_context: str = ""
    global_context_module: str = ""
    #: Misaligned merges as (layer, axis, reference path, shifted path, offset in pixels).
    misaligned_merges: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    #: How the model was read (torch.export, torch.fx, onnx) and its own final stride (0: not declared).
    capture: str = ""
    model_final_stride: int = 0

    def layer(self, name: str) -> LayerField:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def save_plot(self, path: str | Path) -> Path:
        """Write the PNG picture to ``path``."""
        if not self.plot_png:
            raise ValueError("the result has no picture; pass plot=True")
        target = Path(path)
        target.write_bytes(self.plot_png)
        return target


def _pair(value: Pair, name: str) -> pb.Extent:
    if isinstance(value, (int, np.integer)):
        return pb.Extent(height=int(value), width=int(value))
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or (height, width), not {value!r}")
    return pb.Extent(height=int(values[0]), width=int(values[1]))


def _layer_message(layer: Layer) -> pb.LayerSpec:
    if layer.kind not in _KINDS:
        raise ValueError(f"kind must be one of {list(_KINDS)}, not {layer.kind!r}")
    message = pb.LayerSpec(
        name=layer.name,
        kind=_KINDS[layer.kind],
        kernel=_pair(layer.kernel, "kernel"),
        ceil_mode=layer.ceil_mode,
    )
    if layer.stride is not None:
        message.stride.CopyFrom(_pair(layer.stride, "stride"))
    if layer.dilation is not None:
        message.dilation.CopyFrom(_pair(layer.dilation, "dilation"))
    padding = layer.padding
    if isinstance(padding, str):
        modes = {"same": pb.PADDING_MODE_SAME, "valid": pb.PADDING_MODE_VALID}
        if padding.lower() not in modes:
            raise ValueError(f"padding must be a number, a tuple, 'same' or 'valid', not {padding!r}")
        message.padding_mode = modes[padding.lower()]
        return message
    values = [int(padding)] * 4 if isinstance(padding, (int, np.integer)) else [int(p) for p in padding]
    if len(values) == 2:
        values = [values[0], values[0], values[1], values[1]]
    if len(values) != 4:
        raise ValueError(f"padding must be p, (h, w) or (top, bottom, left, right), not {padding!r}")
    message.padding_mode = pb.PADDING_MODE_EXPLICIT
    message.padding.CopyFrom(pb.Padding(top=values[0], bottom=values[1], left=values[2], right=values[3]))
    return message


def _unit_query(unit: Any) -> pb.UnitQuery:
    if isinstance(unit, pb.UnitQuery):
        return unit
    layer, x, y = unit
    return pb.UnitQuery(layer=str(layer), x=int(x), y=int(y))


def _interval(message: pb.Interval) -> Interval:
    return Interval(message.start, message.center, message.end)


def _axis(message: pb.AxisField) -> AxisField:
    return AxisField(
        message.size, message.jump, message.receptive_size, message.start, message.effective_padding
    )


def _result(r: pb.ComputeReceptiveFieldResponse) -> ReceptiveFieldResult:
    layers = [
        LayerField(
            name=f.name,
            kind=_KIND_NAMES.get(f.kind, str(f.kind)),
            operation=f.operation,
            module=f.module,
            inputs=list(f.inputs),
            height=_axis(f.height),
            width=_axis(f.width),
            padding=(f.padding.top, f.padding.bottom, f.padding.left, f.padding.right),
        )
        for f in r.layers
    ]
    units = []
    for u in r.units:
        verification = None
        if u.HasField("verification"):
            v = u.verification
            verification = Verification(
                (v.rows.first, v.rows.last), (v.columns.first, v.columns.last), v.matches
            )
        units.append(
            UnitField(
                layer=u.unit.layer,
                x=u.unit.x,
                y=u.unit.y,
                vertical=_interval(u.vertical),
                horizontal=_interval(u.horizontal),
                vertical_clipped=_interval(u.vertical_clipped),
                horizontal_clipped=_interval(u.horizontal_clipped),
                rows=(u.rows.first, u.rows.last),
                columns=(u.columns.first, u.columns.last),
                verification=verification,
            )
        )
    erf = None
    if r.HasField("effective_field"):
        e = r.effective_field
        erf = EffectiveField(
            layer=e.unit.layer,
            x=e.unit.x,
            y=e.unit.y,
            gradient_map=tensors.to_numpy(e.gradient_map),
            num_samples=e.num_samples,
            sigma_height=e.sigma_height,
            sigma_width=e.sigma_width,
            center_vertical=e.center_vertical,
            center_horizontal=e.center_horizontal,
            pixels_for_95_percent=e.pixels_for_95_percent,
            theoretical_pixels=e.theoretical_pixels,
            share_for_95_percent=e.share_for_95_percent,
            mass_inside_field=e.mass_inside_field,
        )
    return ReceptiveFieldResult(
        layers=layers,
        end_point=r.end_point,
        input_size=(r.input_size.height, r.input_size.width),
        first_pixel_center=r.first_pixel_center,
        units=units,
        verified=r.verified,
        effective_field=erf,
        plot_png=r.plot_png,
        model=r.model,
        raw=r,
        global_context=r.global_context,
        global_context_module=r.global_context_module,
        misaligned_merges=[(m.layer, m.axis, m.reference, m.path, m.offset) for m in r.misaligned_merges],
        capture=r.capture,
        model_final_stride=r.model_final_stride,
    )


@dataclass
class Preprocessing:
    """A model's preprocessing: shorter side to ``resize``, centre crop ``crop`` (h, w), /255, normalise."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ModelInfo:
    """One classifier the server can serve."""

    name: str
    architecture: str
    source: str
    weights_present: bool
    weights_path: str
    weights_file_name: str
    searched: list[str]
    #: sha256 of the weights file ("" when absent).
    version: str
    preprocessing: Preprocessing
    num_classes: int
    is_default: bool
    raw: Any = field(repr=False, default=None)


@dataclass
class ClassScore:
    """A class and its softmax probability."""

    index: int
    label: str
    probability: float


@dataclass
class Classification:
    """The classification of one image: ``top`` most probable first."""

    name: str
    top: list[ClassScore]
    #: (num_classes,) float32 logits when asked for, else None.
    logits: np.ndarray | None
    batch_size: int
    queue_seconds: float
    inference_seconds: float

    @property
    def label(self) -> str:
        """The top-1 label."""
        return self.top[0].label

    @property
    def index(self) -> int:
        """The top-1 class index."""
        return self.top[0].index

    @property
    def probability(self) -> float:
        """The top-1 probability."""
        return self.top[0].probability


@dataclass
class ClassifyResult:
    """Outcome of ``classify``: one ``Classification`` per image, in order."""

    results: list[Classification]
    model: str
    model_version: str
    preprocess_seconds: float
    total_seconds: float
    raw: Any = field(repr=False, default=None)

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Classification:
        return self.results[index]


#: What ``classify`` accepts as one image: a file path, encoded bytes, a PIL image or an (H, W[, C]) array
#: (uint8 in [0, 255] or float in [0, 1]).
ImageLike = Any


def image_message(image: ImageLike, name: str = "") -> common_pb2.Image:
    """One image as an ``Image`` message (PIL images are sent as PNG; PIL itself is optional)."""
    if isinstance(image, common_pb2.Image):
        return image
    if isinstance(image, np.ndarray):
        pixels = image[:, :, None] if image.ndim == 2 else image
        return common_pb2.Image(pixels=tensors.to_tensor(np.ascontiguousarray(pixels)), name=name)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return common_pb2.Image(encoded=bytes(image), name=name)
    if isinstance(image, (str, Path)):
        path = Path(image)
        return common_pb2.Image(encoded=path.read_bytes(), name=name or path.name)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return common_pb2.Image(encoded=buffer.getvalue(), name=name)
    raise TypeError(f"an image is a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def _images(images: ImageLike | Iterable[ImageLike]) -> list[common_pb2.Image]:
    single = isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray, common_pb2.Image))
    if single or (hasattr(images, "save") and hasattr(images, "mode")):
        return [image_message(images)]
    return [image_message(image) for image in images]  # type: ignore[union-attr]


def _model_info(m: Any) -> ModelInfo:
    p = m.preprocessing
    return ModelInfo(
        name=m.name,
        architecture=m.architecture,
        source=m.source,
        weights_present=m.weights_present,
        weights_path=m.weights_path,
        weights_file_name=m.weights_file_name,
        searched=list(m.searched),
        version=m.version,
        preprocessing=Preprocessing(
            p.resize, (p.crop.height, p.crop.width), p.interpolation, tuple(p.mean), tuple(p.std)
        ),
        num_classes=m.num_classes,
        is_default=m.is_default,
        raw=m,
    )


def _scores(messages: Iterable[Any]) -> list[ClassScore]:
    return [ClassScore(c.index, c.label, c.probability) for c in messages]


def _classification(c: Any) -> Classification:
    return Classification(
        name=c.name,
        top=_scores(c.top),
        logits=tensors.to_numpy(c.logits) if c.HasField("logits") else None,
        batch_size=c.batch_size,
        queue_seconds=c.queue_seconds,
        inference_seconds=c.inference_seconds,
    )


_GOALS = {
    None: pb.ATTACK_GOAL_UNSPECIFIED,
    "targeted": pb.ATTACK_GOAL_TARGETED,
    "untargeted": pb.ATTACK_GOAL_UNTARGETED,
}
_METHODS = {
    "adam": pb.ATTACK_METHOD_ADAM,
    "fgsm": pb.ATTACK_METHOD_FGSM,
    "bim": pb.ATTACK_METHOD_BIM,
    "pgd": pb.ATTACK_METHOD_PGD,
    "mi_fgsm": pb.ATTACK_METHOD_MI_FGSM,
    "cw_l2": pb.ATTACK_METHOD_CW_L2,
}
_NORMS = {None: pb.ATTACK_NORM_UNSPECIFIED, "linf": pb.ATTACK_NORM_LINF, "l2": pb.ATTACK_NORM_L2}
ATTACK_METHODS = tuple(_METHODS)


@dataclass
class AttackProgress:
    """One image after one iteration."""

    image: int
    iteration: int
    loss: float
    goal_probability: float
    top1: ClassScore


@dataclass
class TransferResult:
    """How another model (local, or on the server at ``address``) classifies the adversarial image."""

    model: str
    address: str
    top1: ClassScore | None
    fooled: bool
    error: str


@dataclass
class AdversarialResult:
    """The outcome for one image. Pixels are the model's input size; ``perturbation`` (H, W, 3) float32."""

    image: int
    name: str
    original_png: bytes
    adversarial_png: bytes
    perturbation: np.ndarray
    l0: int
    l2: float
    linf: float
    original_top: list[ClassScore]
    final_top: list[ClassScore]
    success: bool
    iterations: int
    seconds: float
    goal_class: int
    transfers: list[TransferResult]
    raw: Any = field(repr=False, default=None)

    def save(self, path: str | Path) -> Path:
        """Write the adversarial PNG to ``path``."""
        target = Path(path)
        target.write_bytes(self.adversarial_png)
        return target


def _adversarial_result(r: Any) -> AdversarialResult:
    return AdversarialResult(
        image=r.image,
        name=r.name,
        original_png=r.original_png,
        adversarial_png=r.adversarial_png,
        perturbation=tensors.to_numpy(r.perturbation),
        l0=r.l0,
        l2=r.l2,
        linf=r.linf,
        original_top=_scores(r.original_top),
        final_top=_scores(r.final_top),
        success=r.success,
        iterations=r.iterations,
        seconds=r.seconds,
        goal_class=r.goal_class,
        transfers=[
            TransferResult(
                t.model,
                t.address,
                ClassScore(t.top1.index, t.top1.label, t.top1.probability) if t.HasField("top1") else None,
                t.fooled,
                t.error,
            )
            for t in r.transfers
        ],
        raw=r,
    )


def parse_epsilon(value: float | str) -> float:
    """``4/255``, ``0.0157`` or a number -> float."""
    if isinstance(value, str):
        numerator, sep, denominator = value.partition("/")
        return float(numerator) / float(denominator) if sep else float(value)
    return float(value)


class VisionClient(BaseClient):
    """``VisionClient("localhost:50051")``; see each method for its options.

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure.
    """

    SERVICE = "vision"
    FULL_NAME = "nnprobe.vision.v1.VisionService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = vision_pb2_grpc.VisionServiceStub(self._channel)

    def compute_receptive_field(
        self,
        layers: Iterable[Layer | pb.LayerSpec] | None = None,
        *,
        model: str | None = None,
        end_point: str | None = None,
        input_size: Pair | None = None,
        first_pixel_center: float | None = None,
        units: Iterable[tuple[str, int, int] | pb.UnitQuery] = (),
        verify: bool = False,
        effective_field: bool = False,
        erf_samples: int = 0,
        erf_seed: int = 0,
        erf_unit: tuple[str, int, int] | None = None,
        model_seed: int = 0,
        plot: bool = False,
        image: bytes | str | Path | np.ndarray | None = None,
        strict: bool = False,
        onnx: bytes | str | Path | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> ReceptiveFieldResult:
        """Receptive field of every layer, and of chosen units, for a layer list or a model.

        Give ``layers`` (``Layer`` objects) or ``model`` (``resnet50``, ``inception_v3``, a timm name...).
        ``units``: (layer, x, y) triples, x the column and y the row of the layer's output, 0-based.
        ``first_pixel_center``: coordinate of the first pixel's centre (default 0.5; the classic guide
        uses 1). ``verify``: prove each box by back-propagation. ``effective_field``: estimate the
        effective receptive field over ``erf_samples`` random inputs. ``plot``: return a PNG, drawn on
        ``image`` (file path, encoded bytes or an (H, W, C) array) or a blank canvas. ``strict``: refuse
        misaligned merges and global context instead of answering with union and local fields.
        ``onnx``: an ONNX model (bytes or a file path) to analyse instead of a named one.
        """
        request = pb.ComputeReceptiveFieldRequest(
            end_point=end_point or "",
            units=[_unit_query(u) for u in units],
            verify=verify,
            strict=strict,
        )
        if layers is not None:
            request.layers.extend(
                layer if isinstance(layer, pb.LayerSpec) else _layer_message(layer) for layer in layers
            )
        if model is not None or onnx is not None:
            data = Path(onnx).read_bytes() if isinstance(onnx, (str, Path)) else (onnx or b"")
            request.model.CopyFrom(pb.ModelSpec(name=model or "", seed=model_seed, onnx=data))
        if input_size is not None:
            request.input_size.CopyFrom(_pair(input_size, "input_size"))
        if first_pixel_center is not None:
            request.first_pixel_center = float(first_pixel_center)
        if effective_field:
            options = pb.EffectiveFieldOptions(num_samples=erf_samples, seed=erf_seed)
            if erf_unit is not None:
                options.unit.CopyFrom(_unit_query(erf_unit))
            request.effective_field.CopyFrom(options)
        if plot or image is not None:
            request.plot.CopyFrom(pb.PlotOptions())
            if image is not None:
                request.plot.image.CopyFrom(_image(image))
        response = self._unary(self._stub.ComputeReceptiveField, request, timeout)
        return _result(response)

    #: A friendlier name for ``compute_receptive_field``.
    receptive_field = compute_receptive_field

    def list_models(self, *, timeout: float | _Default | None = DEFAULT) -> list[ModelInfo]:
        """Every classifier the server can serve, the default first."""
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_model_info(m) for m in response.models]

    def classify(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        model: str | None = None,
        top_k: int = 5,
        skip_resize: bool = False,
        return_logits: bool = False,
        names: Sequence[str] | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> ClassifyResult:
        """ImageNet top-``top_k`` classes of one image or a list of them.

        An image is a file path, encoded bytes (JPEG, PNG, WebP, BMP), a PIL image or an (H, W[, C]) numpy
        array (uint8, or float in [0, 1]). ``model``: a name from ``list_models`` (default: the server's
        default). ``skip_resize``: the images already have the model's input size (no resize or crop).
        ``names`` label the images in the results (file names are used for paths).
        """
        messages = _images(images)
        if names is not None:
            if len(names) != len(messages):
                raise ValueError(f"got {len(names)} names for {len(messages)} images")
            for message, name in zip(messages, names, strict=True):
                message.name = name
        request = pb.ClassifyRequest(
            images=messages,
            model=model or "",
            top_k=top_k,
            skip_resize=skip_resize,
            return_logits=return_logits,
        )
        r = self._unary(self._stub.Classify, request, timeout)
        return _classify_result(r)

    def generate_adversarial(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        target: int | str | None = None,
        untargeted: bool = False,
        method: str = "pgd",
        norm: str | None = None,
        eps: float | str | None = None,
        step_size: float | str | None = None,
        steps: int = 0,
        seed: int = 0,
        random_start: bool | None = None,
        early_stop: bool | None = None,
        refine_steps: int = 0,
        learning_rate: float | None = None,
        momentum_decay: float | None = None,
        cw_c: float | None = None,
        cw_confidence: float = 0.0,
        model: str | None = None,
        top_k: int = 5,
        transfer_models: Sequence[str] = (),
        transfer_addresses: Sequence[str] = (),
        names: Sequence[str] | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> Iterator[AttackProgress | AdversarialResult]:
        """Stream an attack: ``AttackProgress`` events, then one ``AdversarialResult`` per image.

        ``target``: a class index or label (targeted); or ``untargeted=True``. ``method``: ``adam``,
        ``fgsm``, ``bim``, ``pgd``, ``mi_fgsm``, ``cw_l2``. ``eps`` and ``step_size`` in [0, 1] pixel units
        (``"4/255"`` works). ``transfer_models``/``transfer_addresses``: other local models and other
        VisionService servers that classify the final images. Closing the iterator cancels the attack.
        """
        request = _attack_request(
            images,
            target=target,
            untargeted=untargeted,
            method=method,
            norm=norm,
            eps=eps,
            step_size=step_size,
            steps=steps,
            seed=seed,
            random_start=random_start,
            early_stop=early_stop,
            refine_steps=refine_steps,
            learning_rate=learning_rate,
            momentum_decay=momentum_decay,
            cw_c=cw_c,
            cw_confidence=cw_confidence,
            model=model,
            top_k=top_k,
            transfer_models=transfer_models,
            transfer_addresses=transfer_addresses,
            names=names,
        )
        for event in self._stream(self._stub.GenerateAdversarial, request, timeout):
            if event.HasField("progress"):
                p = event.progress
                yield AttackProgress(
                    p.image,
                    p.iteration,
                    p.loss,
                    p.goal_probability,
                    ClassScore(p.top1.index, p.top1.label, p.top1.probability),
                )
            elif event.HasField("result"):
                yield _adversarial_result(event.result)

    def attack(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        on_progress: Callable[[AttackProgress], None] | None = None,
        **options: Any,
    ) -> list[AdversarialResult]:
        """``generate_adversarial`` to the end; results in image order. ``on_progress`` sees each event."""
        results = []
        for event in self.generate_adversarial(images, **options):
            if isinstance(event, AttackProgress):
                if on_progress is not None:
                    on_progress(event)
            else:
                results.append(event)
        return sorted(results, key=lambda r: r.image)


def _classify_result(r: Any) -> ClassifyResult:
    return ClassifyResult(
        results=[_classification(c) for c in r.results],
        model=r.model,
        model_version=r.model_version,
        preprocess_seconds=r.preprocess_seconds,
        total_seconds=r.total_seconds,
        raw=r,
    )


def _attack_request(
    images: Any,
    *,
    target: int | str | None,
    untargeted: bool,
    method: str,
    norm: str | None,
    eps: float | str | None,
    step_size: float | str | None,
    steps: int,
    seed: int,
    random_start: bool | None,
    early_stop: bool | None,
    refine_steps: int,
    learning_rate: float | None,
    momentum_decay: float | None,
    cw_c: float | None,
    cw_confidence: float,
    model: str | None,
    top_k: int,
    transfer_models: Sequence[str],
    transfer_addresses: Sequence[str],
    names: Sequence[str] | None,
) -> pb.GenerateAdversarialRequest:
    if method.lower() not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, not {method!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be linf or l2, not {norm!r}")
    messages = _images(images)
    if names is not None:
        for message, name in zip(messages, names, strict=True):
            message.name = name
    request = pb.GenerateAdversarialRequest(
        model=model or "",
        images=messages,
        goal=pb.ATTACK_GOAL_UNTARGETED if untargeted else pb.ATTACK_GOAL_UNSPECIFIED,
        method=_METHODS[method.lower()],
        norm=_NORMS[norm],
        steps=steps,
        seed=seed,
        refine_steps=refine_steps,
        cw_confidence=cw_confidence,
        top_k=top_k,
        transfer_models=list(transfer_models),
        transfer_addresses=list(transfer_addresses),
    )
    if target is not None:
        request.goal = pb.ATTACK_GOAL_TARGETED if not untargeted else request.goal
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            request.target.label = target
        else:
            request.target.class_index = int(target)
    for name, value in (("epsilon", eps), ("step_size", step_size)):
        if value is not None:
            setattr(request, name, parse_epsilon(value))
    for name, value in (
        ("random_start", random_start),
        ("early_stop", early_stop),
        ("learning_rate", learning_rate),
        ("momentum_decay", momentum_decay),
        ("cw_c", cw_c),
    ):
        if value is not None:
            setattr(request, name, value)
    return request


def _image(image: bytes | str | Path | np.ndarray) -> common_pb2.Image:
    return image_message(image)
