"""Small recurrent models made in the tests, exported with ``torch.export`` and loaded back as a user's
upload would be, plus the reference computations the gradient analyses are checked against: the sequence
unrolled on the original module and differentiated directly with ``torch.autograd`` (never through products
of per-step Jacobians)."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

F64 = torch.float64


class TwoStateCell(nn.Module):
    """A cell of its own kind with states of different widths, called flat as ``cell(x, h, c)``:
    c' = tanh(A x) * sigmoid(B h) + 0.9 c (width C), h' = tanh(W h + U x + V c') (width H)."""

    def __init__(self, inputs: int, hidden: int, memory: int) -> None:
        super().__init__()
        self.a = nn.Linear(inputs, memory)
        self.b = nn.Linear(hidden, memory)
        self.w = nn.Linear(hidden, hidden)
        self.u = nn.Linear(inputs, hidden, bias=False)
        self.v = nn.Linear(memory, hidden, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.tanh(self.a(x)) * torch.sigmoid(self.b(h)) + 0.9 * c
        return torch.tanh(self.w(h) + self.u(x) + self.v(c)), c


class EmbeddedGRU(nn.Module):
    """Token ids (B, T) -> embedding (B, T, D) -> GRU(batch_first) -> (B, T, H)."""

    def __init__(self, vocabulary: int, width: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.gru = nn.GRU(width, hidden, batch_first=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gru(self.embed(ids))[0]


def exported(module: nn.Module, args: tuple) -> torch.nn.Module:
    """``module`` exported, saved to bytes and loaded back: ``torch.export.load(...).module()``."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, args), buffer)
    buffer.seek(0)
    return torch.export.load(buffer).module()


def archive(module: nn.Module, args: tuple) -> bytes:
    """The ``.pt2`` bytes of ``module`` exported on ``args``."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, args), buffer)
    return buffer.getvalue()


def call_cell(
    cell: nn.Module, x: torch.Tensor, states: list[torch.Tensor], nested: bool
) -> list[torch.Tensor]:
    """One step of an eager cell on (I,) and (N_i,) vectors, as a batch of one."""
    batch = [s.reshape(1, -1) for s in states]
    if len(batch) == 1:
        out = cell(x.reshape(1, -1), batch[0])
        return [out.reshape(-1)]
    out = cell(x.reshape(1, -1), tuple(batch)) if nested else cell(x.reshape(1, -1), *batch)
    return [o.reshape(-1) for o in out]


def direct_cell_norms(
    cell: nn.Module, x: torch.Tensor, initial: list[torch.Tensor], *, nested: bool = True
) -> dict[str, list[float]]:
    """|dh_T/dh_k|_2 (and |dc_T/dc_k|_2) for k = 0..T-1 by ``torch.autograd.functional.jacobian`` of the
    unrolled map from the state at k to the state at T (the other state held fixed), and the per-step joint
    Jacobian norms; spectral norms by NumPy's SVD."""
    steps = x.shape[0]
    states = [list(initial)]
    with torch.no_grad():
        for t in range(steps):
            states.append(call_cell(cell, x[t], states[-1], nested))

    def unroll(state: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        for t in range(k, steps):
            state = call_cell(cell, x[t], state, nested)
        return state

    sizes = [s.shape[0] for s in initial]
    result: dict[str, list[float]] = {"h": [], "c": [], "step": []}
    for k in range(steps):
        s = states[k]
        jh = torch.autograd.functional.jacobian(lambda v, s=s, k=k: unroll([v, *s[1:]], k)[0], s[0])
        result["h"].append(spectral(jh))
        if len(s) == 2:
            jc = torch.autograd.functional.jacobian(lambda v, s=s, k=k: unroll([s[0], v], k)[1], s[1])
            result["c"].append(spectral(jc))

        def one_step(v: torch.Tensor, k: int = k) -> torch.Tensor:
            return torch.cat(call_cell(cell, x[k], list(torch.split(v, sizes)), nested))

        result["step"].append(spectral(torch.autograd.functional.jacobian(one_step, torch.cat(s))))
    return result


def direct_sequence_norms(forward, leaf: torch.Tensor) -> tuple[list[float], list[float], float]:
    """For y = forward(leaf) of shape (1, T, H) and ``leaf`` (1, T, D): |dy_T/dleaf_k|_2 for k = 1..T by
    ``torch.autograd.functional.jacobian`` of y_T, |dL/dleaf_k|_2 for L = sum(y_T) by ``torch.autograd.grad``,
    and L."""
    jac = torch.autograd.functional.jacobian(lambda v: forward(v)[0, -1], leaf)  # (H, 1, T, D)
    blocks = [spectral(jac[:, 0, k, :]) for k in range(leaf.shape[1])]
    v = leaf.detach().clone().requires_grad_(True)
    loss = forward(v)[0, -1].sum()
    (grad,) = torch.autograd.grad(loss, v)
    return blocks, [float(np.linalg.norm(g)) for g in grad[0].numpy()], float(loss)


def spectral(matrix: torch.Tensor) -> float:
    """The largest singular value, by NumPy."""
    return float(np.linalg.norm(matrix.detach().numpy(), 2))


def fitted_rate(distances: list[int], norms: list[float]) -> float:
    """exp of the least-squares slope of log(norm) against distance, by ``numpy.polyfit``."""
    return float(np.exp(np.polyfit(np.array(distances, float), np.log(np.array(norms)), 1)[0]))


def pt2_with_fixed_batch(cell: nn.Module, batch: int) -> bytes:
    """The ``.pt2`` bytes of a one-state cell ``(x (B, I), h (B, H)) -> h`` exported for B = ``batch``."""
    x = torch.zeros(batch, cell.input_size)  # type: ignore[arg-type]
    h = torch.zeros(batch, cell.hidden_size)  # type: ignore[arg-type]
    return archive(cell, (x, h))
