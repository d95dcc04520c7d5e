"""Single-layer recurrent cells in PyTorch's parameter layout, and a step-by-step forward pass.

The cells compute exactly what ``torch.nn.RNN/LSTM/GRU`` compute for one layer (same gate order, same
parameter names), written one step at a time so that other modules can differentiate a single step. A
state is one vector per sequence: ``h`` for RNN/GRU cells and ``cat(h, c)`` for an LSTM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nnprobe_services.errors import Cancelled

CELLS = ("rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru")
INIT_SCHEMES = ("pytorch", "normal", "orthogonal")
#: Gate blocks stacked in W_ih / W_hh.
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_linear": 1, "lstm": 4, "gru": 3}
CELL_WEIGHTS = ("weight_ih_l0", "weight_hh_l0")
CELL_BIASES = ("bias_ih_l0", "bias_hh_l0")
OUTPUT_WEIGHTS = ("output.weight", "output.bias")


def _never() -> bool:
    return False


@dataclass
class Cell:
    """A one-layer recurrent cell. ``weights`` maps PyTorch's names to tensors on one device and dtype."""

    kind: str
    weights: dict[str, torch.Tensor]

    @property
    def hidden_size(self) -> int:
        return self.weights["weight_hh_l0"].shape[1]

    @property
    def input_size(self) -> int:
        return self.weights["weight_ih_l0"].shape[1]

    @property
    def has_bias(self) -> bool:
        return "bias_ih_l0" in self.weights

    @property
    def has_output(self) -> bool:
        return "output.weight" in self.weights

    @property
    def state_size(self) -> int:
        """Width of the state vector: 2H for an LSTM (h then c), H otherwise."""
        return 2 * self.hidden_size if self.kind == "lstm" else self.hidden_size

    def step(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One step: ``state`` (..., S), ``x`` (..., D) -> the next state (..., S)."""
        w = self.weights
        hidden = self.hidden_size
        h = state[..., :hidden]
        gi = x @ w["weight_ih_l0"].T
        gh = h @ w["weight_hh_l0"].T
        if self.has_bias:
            gi = gi + w["bias_ih_l0"]
            gh = gh + w["bias_hh_l0"]
        if self.kind == "rnn_tanh":
            return torch.tanh(gi + gh)
        if self.kind == "rnn_relu":
            return torch.relu(gi + gh)
        if self.kind == "rnn_linear":
            return gi + gh
        if self.kind == "gru":
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            return (1 - z) * n + z * h
        c = state[..., hidden:]
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return torch.cat([h_next, c_next], dim=-1)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer W_out h + b_out applied to hidden states (..., H)."""
        y = hidden @ self.weights["output.weight"].T
        return y + self.weights["output.bias"] if "output.bias" in self.weights else y

    def initial_state(
        self, hidden: torch.Tensor | None, cell: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """The state vector (B, S) from h_0 and c_0 (each (B, H) or None for zeros)."""
        like = self.weights["weight_hh_l0"]
        zeros = torch.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)
        h = zeros if hidden is None else hidden
        if self.kind != "lstm":
            return h.clone()
        return torch.cat([h, zeros if cell is None else cell], dim=-1)


@dataclass
class Trajectory:
    """A forward pass: ``states`` (T, B, S) after each step, hidden part, optional cell part and outputs."""

    hidden: torch.Tensor
    cell: torch.Tensor | None
    outputs: torch.Tensor | None
    step_changes: torch.Tensor
    settled_at: list[int]


def run(
    cell: Cell,
    inputs: torch.Tensor,
    initial: torch.Tensor,
    *,
    settle_tolerance: float = 1e-6,
    should_stop: Callable[[], bool] = _never,
) -> Trajectory:
    """Run ``cell`` over ``inputs`` (T, B, D) from the state ``initial`` (B, S)."""
    states = []
    state = initial
    with torch.no_grad():
        for t in range(inputs.shape[0]):
            if should_stop():
                raise Cancelled(f"stopped at step {t} of {inputs.shape[0]}")
            state = cell.step(state, inputs[t])
            states.append(state)
        stacked = torch.stack(states) if states else initial.new_zeros((0, *initial.shape))
        hidden_size = cell.hidden_size
        hidden = stacked[..., :hidden_size]
        previous = torch.cat([initial[None, :, :hidden_size], hidden[:-1]])
        changes = torch.linalg.vector_norm(hidden - previous, dim=-1)
        return Trajectory(
            hidden=hidden,
            cell=stacked[..., hidden_size:] if cell.kind == "lstm" else None,
            outputs=cell.output(hidden) if cell.has_output else None,
            step_changes=changes,
            settled_at=settled_steps(changes, settle_tolerance),
        )


def settled_steps(changes: torch.Tensor, tolerance: float) -> list[int]:
    """Per column of ``changes`` (T, B): the first 1-based step from which all changes are <= tolerance."""
    result = []
    steps = changes.shape[0]
    for column in changes.T.tolist():
        settled = -1
        for t in range(steps - 1, -1, -1):
            if column[t] > tolerance:
                break
            settled = t + 1
        result.append(settled)
    return result


# -- weights ----------------------------------------------------------------------------------------------
def expected_shapes(kind: str, input_size: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """PyTorch's parameter shapes for one layer of ``kind``."""
    rows = GATES[kind] * hidden_size
    return {
        "weight_ih_l0": (rows, input_size),
        "weight_hh_l0": (rows, hidden_size),
        "bias_ih_l0": (rows,),
        "bias_hh_l0": (rows,),
    }


def init_weights(
    kind: str,
    input_size: int,
    hidden_size: int,
    *,
    seed: int,
    scheme: str = "pytorch",
    scale: float = 1.0,
    bias: bool = True,
    output_size: int = 0,
    forget_bias: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Draw the weights (float64, CPU) with ``seed``; the same arguments always give the same numbers."""
    generator = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(kind, input_size, hidden_size)
    gates = GATES[kind]
    weights: dict[str, torch.Tensor] = {}
    if scheme == "pytorch":
        bound = 1.0 / math.sqrt(hidden_size)
        for name, shape in shapes.items():
            if name.startswith("bias") and not bias:
                continue
            weights[name] = _uniform(shape, bound, generator) * scale
    else:
        weights["weight_ih_l0"] = (
            torch.randn(shapes["weight_ih_l0"], generator=generator, dtype=torch.float64)
            / math.sqrt(input_size)
            * (scale if scheme == "normal" else 1.0)
        )
        if scheme == "normal":
            w_hh = torch.randn(shapes["weight_hh_l0"], generator=generator, dtype=torch.float64)
            weights["weight_hh_l0"] = w_hh / math.sqrt(hidden_size) * scale
        else:
            blocks = [_orthogonal(hidden_size, generator) for _ in range(gates)]
            weights["weight_hh_l0"] = torch.cat(blocks) * scale
        if bias:
            for name in CELL_BIASES:
                weights[name] = torch.zeros(shapes[name], dtype=torch.float64)
    if kind == "lstm" and bias and forget_bias:
        weights["bias_ih_l0"][hidden_size : 2 * hidden_size] += forget_bias
    if output_size:
        bound = 1.0 / math.sqrt(hidden_size)
        weights["output.weight"] = _uniform((output_size, hidden_size), bound, generator)
        weights["output.bias"] = _uniform((output_size,), bound, generator)
    return weights


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def _orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the signs of R's diagonal fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def gate_blocks(w_hh: torch.Tensor) -> list[torch.Tensor]:
    """The square H x H gate blocks of W_hh (one for RNN cells)."""
    hidden = w_hh.shape[1]
    return list(w_hh.split(hidden, dim=0))


def block_radii(w_hh: torch.Tensor) -> list[float]:
    """|largest eigenvalue| of each gate block of W_hh; inf for a block holding inf or NaN (LAPACK's
    eigen-solver must never see one: it can crash the process)."""
    return [
        float(torch.linalg.eigvals(b).abs().max()) if bool(torch.isfinite(b).all()) else math.inf
        for b in gate_blocks(w_hh)
    ]


def spectral_radius(w_hh: torch.Tensor) -> float:
    """Largest |eigenvalue| over the gate blocks of W_hh."""
    return max(block_radii(w_hh))


def rescale_spectral_radius(
    w_hh: torch.Tensor, target: float, radii: list[float] | None = None
) -> torch.Tensor:
    """W_hh with each gate block scaled so that its spectral radius is ``target``. ``radii``: the blocks'
    radii when already known (``block_radii``), to skip the eigen-decompositions.

    Raises ``ValueError`` when a block has spectral radius 0 (nilpotent or zero) and cannot be scaled.
    """
    radii = block_radii(w_hh) if radii is None else radii
    scaled = []
    for index, (block, radius) in enumerate(zip(gate_blocks(w_hh), radii, strict=True)):
        if radius == 0.0 or not math.isfinite(radius):
            raise ValueError(
                f"gate block {index} of weight_hh_l0 has spectral radius {radius}; cannot rescale"
            )
        scaled.append(block * (target / radius))
    return torch.cat(scaled)
