"""Why ``detach()`` in truncated backpropagation through time saves memory, measured.

The model is the course's language model: embedding -> one-layer LSTM -> linear over the vocabulary. It
reads K consecutive chunks of L tokens, carrying the LSTM state from chunk to chunk:

- truncated: the state is detached before each chunk and each chunk runs its own backward, which frees
  that chunk's graph; autograd never holds more than one chunk's saved tensors.
- full: the state is not detached; the graph spans all K chunks and one backward runs at the end, so
  every chunk's saved tensors are held at once.

Memory held for backward is counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor
autograd saves passes through the pack hook; distinct storages are summed (parameters excluded, they
are held either way), and the peak is taken at each backward. On a GPU the allocator's peak is reported
too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
from torch import nn

from nnprobe_services.errors import Cancelled

MODES = ("truncated", "full")


def _never() -> bool:
    return False


class LanguageModel(nn.Module):
    """Embedding -> LSTM (batch first) -> linear over the vocabulary."""

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, 1, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.lstm(self.embed(tokens), state)
        return self.linear(out.reshape(-1, out.shape[-1])), state


def build_model(
    vocab_size: int, embed_size: int, hidden_size: int, *, seed: int, device: torch.device
) -> LanguageModel:
    """The model with PyTorch's default initialisation drawn from its own generator seeded with ``seed``."""
    with torch.device("meta"):
        model = LanguageModel(vocab_size, embed_size, hidden_size)
    model = model.to_empty(device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    bound = hidden_size**-0.5
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("embed"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
    return model.to(device)


def draw_tokens(
    vocab_size: int, batch_size: int, length: int, seed: int, device: torch.device
) -> torch.Tensor:
    """(B, length) token ids drawn uniformly from the vocabulary."""
    generator = torch.Generator().manual_seed((seed + 0x9E3779B97F4A7C15) % 2**64)
    return torch.randint(vocab_size, (batch_size, length), generator=generator).to(device)


class SavedTensorBytes:
    """Counts the bytes of the distinct storages autograd saves for backward, parameters excluded."""

    def __init__(self, parameters: list[torch.Tensor]) -> None:
        self.excluded = {p.untyped_storage().data_ptr() for p in parameters}
        self.storages: dict[tuple[str, int], int] = {}
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.excluded and storage.nbytes():
            self.storages[(str(tensor.device), pointer)] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def before_backward(self) -> None:
        """Record the bytes held now (the graph is complete) as a candidate peak."""
        self.peak = max(self.peak, sum(self.storages.values()))

    def after_backward(self) -> None:
        """The graph has been freed: forget its saved tensors."""
        self.storages.clear()


@dataclass
class Point:
    """K chunks in one mode."""

    chunk_count: int
    mode: str
    saved_bytes: int
    peak_device_bytes: int
    seconds: float
    loss: float
    backward_passes: int


@dataclass
class Comparison:
    """Every K in both modes, and the slopes of saved bytes against K."""

    points: list[Point] = field(default_factory=list)
    truncated_slope_bytes: float = 0.0
    full_slope_bytes: float = 0.0
    parameters: int = 0


@dataclass
class Progress:
    """``done`` of ``total`` chunks, with a note of what runs."""

    done: int
    total: int
    message: str


def measure(
    model: LanguageModel,
    tokens: torch.Tensor,
    chunk_count: int,
    chunk_length: int,
    mode: str,
    *,
    should_stop: Callable[[], bool] = _never,
) -> Generator[int, None, Point]:
    """Run ``chunk_count`` chunks in ``mode``; yields chunks done, returns the ``Point``."""
    device = tokens.device
    batch = tokens.shape[0]
    hidden = model.lstm.hidden_size
    model.zero_grad(set_to_none=True)
    counter = SavedTensorBytes(list(model.parameters()))
    zeros = torch.zeros(1, batch, hidden, device=device)
    state = (zeros, zeros.clone())
    losses: list[torch.Tensor] = []
    backward_passes = 0
    base = _start_device_peak(device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        for i in range(chunk_count):
            if should_stop():
                raise Cancelled(f"stopped at chunk {i} of {chunk_count} ({mode})")
            inputs = tokens[:, i * chunk_length : (i + 1) * chunk_length]
            targets = tokens[:, i * chunk_length + 1 : (i + 1) * chunk_length + 1]
            if mode == "truncated":
                state = (state[0].detach(), state[1].detach())
            logits, state = model(inputs, state)
            loss = nn.functional.cross_entropy(logits, targets.reshape(-1))
            losses.append(loss)
            if mode == "truncated":
                counter.before_backward()
                loss.backward()
                backward_passes += 1
                counter.after_backward()
            yield i + 1
        if mode == "full":
            counter.before_backward()
            (torch.stack(losses).sum() / chunk_count).backward()
            backward_passes += 1
            counter.after_backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    mean_loss = float(torch.stack([loss.detach() for loss in losses]).double().mean())
    return Point(chunk_count, mode, counter.peak, peak, seconds, mean_loss, backward_passes)


def _start_device_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def slope(xs: list[int], ys: list[int]) -> float:
    """Least-squares slope of ys against xs; 0 with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return 0.0
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return covariance / sum((x - mean_x) ** 2 for x in xs)


def compare(
    vocab_size: int,
    embed_size: int,
    hidden_size: int,
    batch_size: int,
    chunk_length: int,
    chunk_counts: list[int],
    *,
    seed: int,
    device: torch.device,
    should_stop: Callable[[], bool] = _never,
) -> Generator[Progress | Comparison, None, None]:
    """Measure every K of ``chunk_counts`` truncated and full. Yields ``Progress``, then a ``Comparison``."""
    model = build_model(vocab_size, embed_size, hidden_size, seed=seed, device=device)
    tokens = draw_tokens(vocab_size, batch_size, max(chunk_counts) * chunk_length + 1, seed, device)
    total = 2 * sum(chunk_counts)
    done = 0
    result = Comparison(parameters=sum(p.numel() for p in model.parameters()))
    for k in chunk_counts:
        for mode in MODES:
            run = measure(model, tokens, k, chunk_length, mode, should_stop=should_stop)
            while True:
                try:
                    chunks = next(run)
                except StopIteration as finished:
                    result.points.append(finished.value)
                    break
                yield Progress(done + chunks, total, f"K={k} {mode}")
            done += k
    model.zero_grad(set_to_none=True)
    for mode in MODES:
        points = [p for p in result.points if p.mode == mode]
        value = slope([p.chunk_count for p in points], [p.saved_bytes for p in points])
        if mode == "truncated":
            result.truncated_slope_bytes = value
        else:
            result.full_slope_bytes = value
    yield result
