"""The effective receptive field of a request (Luo et al., NeurIPS 2016), through random or trained weights
and over random inputs or the user's own images, with the protocol that reproduces it.

* Random inputs: ``num_samples`` N(0, 1) draws of the network's input tensor from a private generator
  seeded with ``seed``, in batches of 4 (``empirical.gradient_map``).
* Images: decoded, resized and centre-cropped to the input size as Classify does (``images.decode``), then
  put through the model's input convention: a repository model's ``config.yaml`` (``models.store
  .transform_of``), ImageNet's mean and std for built-in architectures, the mean of the RGB channels for a
  single-channel layer list. Gradients are taken with respect to the network's input tensor.

The map is the mean over inputs and input channels of |d y / d x| for the unit y summed over its channels,
float64 (H, W); the same request gives the same map on the same server (no global random state is read).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

from nnprobe_services.errors import Cancelled, FailedPrecondition, ResourceExhausted, ShouldStop
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.images.preprocess import Preprocessing
from nnprobe_services.vision.models.store import ModelStore, transform_of
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import boxes, empirical, plot
from nnprobe_services.vision.receptive_fields.probes import Prober, weights_of
from nnprobe_services.vision.receptive_fields.values import (
    MAX_ERF_IMAGES,
    EffectiveOptions,
    EffectiveProtocol,
    EffectiveResult,
    FieldRequest,
    RepositoryModel,
)

#: ImageNet's per-channel mean and standard deviation (torchvision's and timm's default convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Most encoded bytes of one image.
MAX_IMAGE_BYTES = 32 * 1024 * 1024

Resolver = Callable[[str, str], str]


def effective_field(
    request: FieldRequest,
    fields: list[rf.LayerField],
    resolve: Resolver,
    end: str,
    probe: Prober,
    input_size: tuple[int, int],
    device: torch.device,
    should_stop: ShouldStop,
    user: RepositoryModel | None,
    models: ModelStore | None,
) -> EffectiveResult:
    """The effective field ``request.effective`` asks for (see the module docstring)."""
    options = request.effective
    assert options is not None
    if options.unit is not None:
        layer, x, y = options.unit
        layer = resolve(layer, "effective_field.unit.layer")
    else:
        layer = end
        x, y = boxes.center_unit(next(f for f in fields if f.name == end))
    origin = request.origin
    unit = boxes.unit_field(fields, layer, x, y, input_size, origin, field="effective_field.unit")
    weights = weights_of(options.weights, request, user, "effective_field.weights")
    seed = options.weight_seed if weights == "random" else 0
    network, channels = probe([layer], weights, seed)
    if options.images:
        inputs = _image_inputs(options, input_size, channels, user, models)
        grad_map = image_gradient_map(network, inputs.to(device), (layer, x, y), should_stop)
        count, kind, input_seed, dtype = int(inputs.shape[0]), "images", 0, inputs.dtype
    else:
        grad_map = empirical.gradient_map(
            network,
            channels,
            input_size,
            device,
            (layer, x, y),
            options.num_samples,
            options.seed,
            should_stop,
        )
        count, kind, input_seed = options.num_samples, "normal(0, 1)", options.seed
        dtype = torch.get_default_dtype()  # the dtype of empirical.gradient_map's draws
    summary = empirical.summarise(grad_map, (*unit.rows, *unit.columns), count)
    protocol = EffectiveProtocol(
        count,
        input_seed,
        kind,
        input_size,
        weights,
        seed,
        str(dtype).removeprefix("torch."),
        user.version if user is not None and weights == "trained" else 0,
    )
    return EffectiveResult((layer, x, y), unit, summary, protocol)


def _image_inputs(
    options: EffectiveOptions,
    input_size: tuple[int, int],
    channels: int,
    user: RepositoryModel | None,
    models: ModelStore | None,
) -> torch.Tensor:
    """The request's images as the network's input tensor (N, channels, H, W) float32."""
    if len(options.images) > MAX_ERF_IMAGES:
        raise ResourceExhausted(
            f"holds {len(options.images)} images; the limit is {MAX_ERF_IMAGES}",
            field="effective_field.images",
        )
    config = None
    if user is not None and models is not None and models.repository is not None:
        config = models.repository.get(user.name, "model.name").config
    configured = (config.height, config.width) if config is not None else (224, 224)
    resize = config.resize if config is not None else 256
    scale = Fraction(min(input_size), min(configured))  # the configured resize, scaled to the input size
    prep = Preprocessing(
        max(round(resize * scale), min(input_size)),
        input_size,
        config.interpolation if config is not None else "bilinear",
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    limits = decode.ImageLimits(MAX_IMAGE_BYTES, plot.MAX_IMAGE_PIXELS)
    pixels = decode.model_inputs(list(options.images), prep, limits, skip_resize=False)
    if config is not None and user is not None:
        if config.dtype == "uint8" or config.layout == "nhwc":
            raise FailedPrecondition(
                f"model {user.name!r} takes {config.layout} {config.dtype} input; the effective field over "
                f"images needs a float NCHW input, whose gradient exists",
                field="effective_field.images",
            )
        with torch.no_grad():
            return transform_of(config)(pixels)
    if channels == 1:
        return pixels.mean(dim=1, keepdim=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def image_gradient_map(
    probe: empirical.Probe,
    inputs: torch.Tensor,
    unit: tuple[str, int, int],
    should_stop: Callable[[], bool],
    batch: int = 4,
) -> np.ndarray:
    """Mean over ``inputs`` (N, C, H, W) and their channels of |d y / d x|, float64 (H, W)."""
    layer, ux, uy = unit
    count, channels = int(inputs.shape[0]), int(inputs.shape[1])
    total = torch.zeros(tuple(inputs.shape[2:]), dtype=torch.float64)
    for start in range(0, count, batch):
        if should_stop():
            raise Cancelled(f"stopped after {start} of {count} images")
        x = inputs[start : start + batch].clone().requires_grad_(True)
        y = probe(x)[layer][:, :, uy, ux].sum()
        (grad,) = torch.autograd.grad(y, x)
        total += grad.abs().to(torch.float64).sum(dim=(0, 1)).cpu()
    return (total / (count * channels)).numpy()
