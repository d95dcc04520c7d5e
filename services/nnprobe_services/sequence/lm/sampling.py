"""Generating words from a trained model: multinomial (temperature, top-k, top-p) or greedy.

Draws come from a ``torch.Generator`` seeded by the request, on the CPU, so the same request gives the
same words every time, whatever else the server is doing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.sequence.lm.model import LanguageModel


@dataclass
class Sampled:
    word_ids: list[int]
    log_probability: float


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Log-probabilities of softmax(logits / T) with everything outside the top ``top_k`` words and the
    ``top_p`` nucleus set to -inf (the most probable word always survives)."""
    logits = logits.double()
    # Shift so the largest logit is 0 before dividing: the same distribution, and a tiny temperature then
    # gives 0 and -inf (the argmax) instead of overflowing to inf - inf = NaN.
    scores = torch.log_softmax((logits - logits.max()) / temperature, dim=-1)
    if 0 < top_k < scores.numel():
        threshold = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if 0 < top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = ordered.exp().cumsum(0)
        drop = cumulative - ordered.exp() >= top_p  # words after the nucleus is already full
        scores = scores.clone()
        scores[order[drop]] = float("-inf")
    return scores


@torch.no_grad()
def sample(
    model: LanguageModel,
    prompt_ids: list[int],
    num_words: int,
    *,
    greedy: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: torch.device,
) -> Sampled:
    """Feed ``prompt_ids`` one by one from a zero state, then generate ``num_words`` words, each fed back
    as the next input (the notebook's loop)."""
    generator = torch.Generator().manual_seed(seed)
    state = model.initial_state(1, device)
    logits, state = model(torch.tensor([prompt_ids], device=device), state)
    last = logits[-1].cpu()
    words: list[int] = []
    total = 0.0
    for _ in range(num_words):
        if not bool(torch.isfinite(last).all()):
            raise FailedPrecondition(
                "the model's outputs are not finite (its training diverged); it cannot be sampled",
                field="job_id",
            )
        if greedy:
            word = int(torch.argmax(last))
        else:
            scores = filter_logits(last, temperature, top_k, top_p)
            word = int(torch.multinomial(scores.exp(), 1, generator=generator))
        total += float(torch.log_softmax(last.double(), dim=-1)[word])
        words.append(word)
        logits, state = model(torch.tensor([[word]], device=device), state)
        last = logits[-1].cpu()
    return Sampled(words, total)
