"""Back-propagation through a real network made transparent in place: every convolution's weights
1 / fan_in and no bias, batch normalisation the identity, max-pooling an average pool of the same geometry,
and the branches that bring global context (squeeze-and-excitation gates, DeepLabV3's pooled ASPP branch,
LR-ASPP's attention) held constant (detached), as the analysis defines the local field. With an input of
ones every activation is positive, so the input gradient of a unit is non-zero exactly on the pixels its
local paths connect it to."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPPPooling
from torchvision.ops.misc import SqueezeExcitation

Range = tuple[int, int]


def transparent(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with positive weights and its global branches detached."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, name, pool)
    for module in model.modules():
        if isinstance(module, SqueezeExcitation):  # the gate, computed from the whole map
            module._scale = _held(module._scale)  # type: ignore[method-assign]
        elif isinstance(module, ASPPPooling):  # the pooled branch, broadcast over the image
            module.register_forward_hook(_detached)
        elif module.__class__.__name__ == "LRASPPHead":  # its attention from the pooled map
            module.scale.register_forward_hook(_detached)
    return model


def _held(scale):
    return lambda x: scale(x).detach()


def _detached(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
    return out.detach()


def support(
    model: nn.Module, size: tuple[int, int], units: list[tuple[int, int]]
) -> list[tuple[Range, Range]]:
    """For each unit (x, y) of the output (``['out']`` of a dict), the rows and columns (first, last) of the
    input pixels with a non-zero gradient; ``model`` from ``transparent``."""
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    image = torch.ones(1, channels, *size, dtype=torch.float64, requires_grad=True)
    out = model(image)
    out = out["out"] if isinstance(out, dict) else out
    found = []
    for x, y in units:
        (grad,) = torch.autograd.grad(out[0, :, y, x].sum(), image, retain_graph=True)
        hit = grad[0].abs().sum(0) != 0
        rows, columns = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
        found.append(((int(rows[0]), int(rows[-1])), (int(columns[0]), int(columns[-1]))))
    return found
