"""Perplexity evaluation: mean cross-entropy over a split read in chunks with the LSTM state carried, as
the notebook's ``evaluate``. Pure PyTorch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from nnprobe_services.errors import Cancelled, never
from nnprobe_services.sequence.lm.corpus import batchify
from nnprobe_services.sequence.lm.model import LanguageModel


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    ids: torch.Tensor,
    batch_size: int,
    sequence_length: int,
    device: torch.device,
    should_stop: Callable[[], bool] = never,
) -> tuple[float, int]:
    """Mean cross-entropy (nats) over every predicted token of ``ids`` cut into ``batch_size`` rows and
    read in chunks of ``sequence_length`` with the state carried; returns (loss, tokens predicted)."""
    total, count = loss_sum(model, batchify(ids, batch_size), sequence_length, device, should_stop)
    if count == 0:
        raise ValueError(f"the split has too few tokens ({ids.numel()}) for {batch_size} streams")
    return total.item() / count, count


@torch.no_grad()
def loss_sum(
    model: LanguageModel,
    rows: torch.Tensor,
    sequence_length: int,
    device: torch.device,
    should_stop: Callable[[], bool] = never,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (float64) and token count over the streams ``rows`` (R, columns), read in
    chunks with the state carried. ``should_stop`` is called once per chunk even when R is 0, so ranks
    holding different numbers of streams call it equally often."""
    was_training = model.training
    model.eval()
    data = rows.to(device)
    columns = data.shape[1]
    state = model.initial_state(data.shape[0], device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for i in range(0, columns - 1, sequence_length):
            if should_stop():
                raise Cancelled("evaluation stopped")
            if data.shape[0] == 0:
                continue
            length = min(sequence_length, columns - 1 - i)
            logits, state = model(data[:, i : i + length], state)
            targets = data[:, i + 1 : i + 1 + length].reshape(-1)
            total += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
            count += targets.numel()
    finally:
        model.train(was_training)
    return total, count


__all__ = ["evaluate", "loss_sum", "perplexity"]
