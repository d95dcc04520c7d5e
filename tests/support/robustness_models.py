"""Models and data for the robustness-evaluation tests: the tiny CNN's weakest and strongest images, a model
robust on purpose (it rounds its input to a coarse grid), one whose gradients are masked, a randomised one,
one that returns probabilities, and a black box that counts its queries per image."""

from __future__ import annotations

import torch
from torch import nn

from tests.support.tiny_cnn import network


def frozen_tiny_cnn(seed: int = 0) -> nn.Module:
    """The 5-class tiny CNN (N, 3, 16, 16) → (N, 5) in eval mode with frozen weights."""
    net = network(seed)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def weak_and_strong(net: nn.Module, count: int = 8, pool: int = 256, seed: int = 1):
    """8-bit random images: the ``count`` with the smallest top-2 logit margin, then the ``count`` with the
    largest, and the model's predictions as labels. Returns (images (2·count, 3, 16, 16), labels)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.round(torch.rand(pool, 3, 16, 16, generator=generator) * 255) / 255
    with torch.no_grad():
        logits = net(images)
    top = logits.topk(2, dim=1).values
    order = (top[:, 0] - top[:, 1]).argsort()
    chosen = torch.cat([images[order[:count]], images[order[-count:]]])
    with torch.no_grad():
        return chosen, net(chosen).argmax(1)


class CoarseInput(nn.Module):
    """Rounds its input to ``levels`` values per channel before ``net``: robust by construction to any
    perturbation smaller than half a coarse step around images on the coarse grid (zero gradients)."""

    def __init__(self, net: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.levels - 1
        return self.net(torch.round(x * steps) / steps)


class MaskedGradients(nn.Module):
    """``net``'s logits with every gradient zero: the output is ``net``'s, the gradient path is x·0."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach()) + 0.0 * x.flatten(1).sum(1, keepdim=True)


class Randomised(nn.Module):
    """``net`` on its input plus Gaussian noise of ``scale`` from its own generator."""

    def __init__(self, net: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        self.net, self.scale = net, scale
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator) * self.scale
        return self.net(x + noise)


class Probabilities(nn.Module):
    """``net``'s softmax: outputs that are probabilities, not logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class QueryCounter:
    """A black box around ``net`` that attributes every row it is given to the nearest of ``originals``
    (L-infinity distance; the images are far apart) and counts the rows per original image."""

    def __init__(self, net: nn.Module, originals: torch.Tensor) -> None:
        self.net, self.originals = net, originals.flatten(1)
        self.counts = torch.zeros(len(originals), dtype=torch.long)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        distances = (x.flatten(1)[:, None, :] - self.originals[None]).abs().amax(2)
        owners = distances.argmin(1)
        self.counts += torch.bincount(owners, minlength=len(self.originals))
        with torch.no_grad():
            return self.net(x)
