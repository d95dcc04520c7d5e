"""Small token models (X (B, T, D) -> (B, T, D) or pooled (B, D)) for the symmetry certificates, and the
brute-force symmetry error written out with plain indexing (no code of the service)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import torch
from torch import nn


class EncoderModel(nn.Module):
    """nn.TransformerEncoderLayer (batch_first, dropout 0), optionally after a learned positional
    embedding nn.Parameter (1, T, D) added to the input, optionally pooled over tokens (``mean`` or
    ``first``)."""

    def __init__(self, t: int, d: int, *, positions: bool = False, pool: str | None = None, heads: int = 2):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True
        )
        self.positions = nn.Parameter(0.5 * torch.randn(1, t, d)) if positions else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.positions is not None:
            x = x + self.positions
        y = self.layer(x)
        if self.pool == "mean":
            return y.mean(dim=1)
        if self.pool == "first":
            return y[:, 0]
        return y


def export_bytes(model: nn.Module, shape: tuple[int, int, int]) -> bytes:
    """``torch.export`` archive of ``model`` (in eval mode) for an input of ``shape``."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model.eval(), (torch.randn(*shape),)), buffer)
    return buffer.getvalue()


def load_exported(data: bytes, dtype: torch.dtype) -> torch.fx.GraphModule:
    """A fresh ``ExportedProgram.module()`` of the archive, cast to ``dtype`` (each call its own copy)."""
    module = torch.export.load(io.BytesIO(data)).module().to(dtype)
    assert isinstance(module, torch.fx.GraphModule)
    return module


def export_onnx(model: nn.Module, shape: tuple[int, int, int], path: Path) -> Path:
    """ONNX (opset 17, the TorchScript exporter) of ``model`` in eval mode, written to ``path``."""
    torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17)
    return path


def brute_force_errors(f, x: torch.Tensor, *, invariant: bool, t: int) -> dict[tuple[int, ...], float]:
    """max |f(x[:, p]) - f(x)[:, p]| (or |f(x[:, p]) - f(x)|) for every permutation p of range(t), with
    plain list indexing."""
    with torch.no_grad():
        reference = f(x)
        errors = {}
        for p in itertools.permutations(range(t)):
            out = f(x[:, list(p)])
            expected = reference if invariant else reference[:, list(p)]
            errors[p] = float((out - expected).abs().max())
    return errors
