"""Small recurrent and token models exported the ways a user would: ``torch.export.save`` archives (``.pt2``,
with a dynamic batch and, for sequences, a dynamic length) and ONNX files (opset 17, which onnx2torch
converts). Bytes are returned so a test can write them where it wants or upload them."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def lstm_cell(input_size: int = 3, hidden_size: int = 5, seed: int = 0) -> nn.LSTMCell:
    """``nn.LSTMCell``: ``(x (B, I), (h, c) each (B, H)) -> (h, c)``."""
    torch.manual_seed(seed)
    return nn.LSTMCell(input_size, hidden_size).eval()


def gru_cell(input_size: int = 3, hidden_size: int = 5, seed: int = 0) -> nn.GRUCell:
    """``nn.GRUCell``: ``(x (B, I), h (B, H)) -> h``."""
    torch.manual_seed(seed)
    return nn.GRUCell(input_size, hidden_size).eval()


class FixedPrecisionCell(nn.Module):
    """``h' = tanh(W x + U h.to(float32))``: a cell whose graph names float32 itself."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.input(x) + self.recurrent(h.to(torch.float32)))


class SequenceLSTM(nn.Module):
    """``nn.LSTM`` (batch first) returning its outputs only: ``(B, T, I) -> (B, T, H)``."""

    def __init__(self, input_size: int = 3, hidden_size: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class TokenMixer(nn.Module):
    """A one-head self-attention block: ``(B, T, D) -> (B, T, D)``, or mean-pooled ``(B, D)``."""

    def __init__(self, d_model: int = 8, pooled: bool = False) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, 1, batch_first=True)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(x, x, x, need_weights=False)[0] + x
        return y.mean(dim=1) if self.pooled else y


def pt2_bytes(module: nn.Module, args: tuple, dynamic_shapes=None) -> bytes:
    """``torch.export.save`` of ``module`` exported at ``args``."""
    program = torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def cell_pt2(cell: nn.Module, input_size: int, hidden_size: int, states: int) -> bytes:
    """A cell's archive with a dynamic batch; an ``nn.LSTMCell`` takes ``(x, (h, c))``."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    x = torch.randn(2, input_size)
    hidden = [torch.randn(2, hidden_size) for _ in range(states)]
    if isinstance(cell, nn.LSTMCell):
        return pt2_bytes(cell, (x, tuple(hidden)), ({0: batch}, ({0: batch}, {0: batch})))
    return pt2_bytes(cell, (x, *hidden), tuple({0: batch} for _ in range(1 + states)))


def sequence_pt2(module: nn.Module, feature_size: int, length: int = 5) -> bytes:
    """A ``(B, T, I)`` model's archive with a dynamic batch; the length is fixed at ``length`` (an
    ``nn.LSTM``'s loop over time is unrolled by the export)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    return pt2_bytes(module, (torch.randn(2, length, feature_size),), ({0: batch},))


def onnx_bytes(module: nn.Module, args: tuple, names: list[str]) -> bytes:
    """ONNX (opset 17, TorchScript exporter) of ``module`` at ``args``, every input's first axis dynamic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=names,
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    return buffer.getvalue()
