"""Perplexity of a language model over every predicted token of a split. Pure PyTorch; no gRPC.

A split of N tokens has N - 1 predicted tokens (every token but the first). They are cut into S
contiguous streams as ``numpy.array_split`` cuts ``range(1, N)``: stream s predicts the targets
[a_s, b_s) from the inputs [a_s - 1, b_s - 1), so consecutive streams share one token (the last input of
one is the first target of the next) and nothing is dropped. Each stream starts from a zero state, and its
state is carried across chunks of ``sequence_length`` tokens (truncated reading, the carried-state protocol
of Zaremba et al. 2014 and of PyTorch's ``word_language_model`` example). Streams shorter than the longest
are padded at their end with targets that the loss ignores, so padding never reaches a counted prediction.

S = 1 reads the split as one stream with full context: the protocol of Zaremba et al.'s test perplexity
(their ``run_test`` predicts each test token from all the tokens before it). The training loop of the course
notebook and of ``word_language_model`` instead cut the split into S rows with ``batchify`` and dropped the
N mod S tail and the first token of every row (82,400 of the 82,429 predicted PTB test tokens with S = 20).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from nnprobe_services.errors import Cancelled, InvalidArgument, never
from nnprobe_services.sequence.lm.model import LanguageModel

#: Target id of padding positions; ``torch.nn.functional.cross_entropy`` skips it (its default).
IGNORE = -100


def perplexity(loss: float) -> float:
    """exp(loss) for a mean cross-entropy in nats; ``inf`` when it would overflow."""
    return math.exp(loss) if loss < 700 else math.inf


def check_streams(tokens: int, streams: int, field: str, split: str = "the split") -> None:
    """Raise ``InvalidArgument`` (``field``) unless a split of ``tokens`` tokens gives every one of
    ``streams`` streams at least one predicted token (tokens - 1 >= streams)."""
    if tokens - 1 < streams:
        raise InvalidArgument(
            f"{split} has {tokens} tokens ({max(tokens - 1, 0)} predicted), too few for {streams} streams",
            field=field,
        )


def stream_bounds(tokens: int, streams: int) -> list[tuple[int, int]]:
    """The target ranges [a, b) of the ``streams`` streams over targets 1..tokens-1, in order, as
    ``numpy.array_split`` cuts them (the first (tokens - 1) mod streams streams are one longer)."""
    predicted = tokens - 1
    if streams < 1 or predicted < streams:
        raise ValueError(f"{tokens} tokens cannot feed {streams} streams")
    size, extra = divmod(predicted, streams)
    bounds = []
    start = 1
    for s in range(streams):
        end = start + size + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def streams_of(ids: torch.Tensor, streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, both (streams, longest) int64: row s holds stream s's inputs ids[a-1:b-1] and
    targets ids[a:b], padded at the end with input 0 and target ``IGNORE``."""
    bounds = stream_bounds(ids.numel(), streams)
    longest = max(b - a for a, b in bounds)
    inputs = torch.zeros(streams, longest, dtype=torch.long)
    targets = torch.full((streams, longest), IGNORE, dtype=torch.long)
    for row, (a, b) in enumerate(bounds):
        inputs[row, : b - a] = ids[a - 1 : b - 1]
        targets[row, : b - a] = ids[a:b]
    return inputs, targets


@torch.no_grad()
def loss_sum(
    model: LanguageModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sequence_length: int,
    device: torch.device,
    should_stop: Callable[[], bool] = never,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats, float64 scalar) and the number of counted targets over the streams
    ``inputs``/``targets`` (R, columns), read in chunks of ``sequence_length`` with the state carried.
    ``should_stop`` is called once per chunk even when R is 0, so data-parallel ranks holding different
    numbers of streams call it equally often.

    Raises:
        Cancelled: ``should_stop`` returned true.
    """
    was_training = model.training
    model.eval()
    data, wanted = inputs.to(device), targets.to(device)
    columns = data.shape[1]
    state = model.initial_state(data.shape[0], device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for i in range(0, columns, sequence_length):
            if should_stop():
                raise Cancelled("evaluation stopped")
            if data.shape[0] == 0:
                continue
            logits, state = model(data[:, i : i + sequence_length], state)
            chunk = wanted[:, i : i + sequence_length].reshape(-1)
            total += nn.functional.cross_entropy(logits, chunk, ignore_index=IGNORE, reduction="sum").double()
            count += int((chunk != IGNORE).sum())
    finally:
        model.train(was_training)
    return total, count


def evaluate(
    model: LanguageModel,
    ids: torch.Tensor,
    streams: int,
    sequence_length: int,
    device: torch.device,
    should_stop: Callable[[], bool] = never,
) -> tuple[float, int]:
    """Mean cross-entropy (nats per token) over every predicted token of ``ids`` (1-D int64, N tokens)
    read as ``streams`` contiguous streams; returns (loss, N - 1).

    Raises:
        ValueError: fewer than ``streams`` predicted tokens. Cancelled: ``should_stop`` returned true.
    """
    inputs, targets = streams_of(ids, streams)
    total, count = loss_sum(model, inputs, targets, sequence_length, device, should_stop)
    return total.item() / count, count


__all__ = ["IGNORE", "check_streams", "evaluate", "loss_sum", "perplexity", "stream_bounds", "streams_of"]
