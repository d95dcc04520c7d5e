"""Generating words from a trained model: multinomial (temperature, top-k, top-p) or greedy.

Draws come from a ``torch.Generator`` seeded by the request, on the CPU, so the same request gives the
same words every time, whatever else the server is doing.

Options follow the usual decoding conventions (Hugging Face ``transformers`` logits warpers, vLLM's
``SamplingParams``): temperature 0 is greedy decoding (the limit of softmax(logits / T) as T -> 0), top-k 0
keeps every word, top-p is the nucleus of Holtzman et al. (2020) and lies in (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nnprobe_services.errors import FailedPrecondition, InvalidArgument
from nnprobe_services.sequence.lm.model import LanguageModel


@dataclass
class Sampled:
    word_ids: list[int]
    log_probability: float


@dataclass(frozen=True)
class SamplingOptions:
    """Validated decoding options: ``greedy`` (argmax at every step) or multinomial draws from the
    top-``top_k`` / top-``top_p`` part of softmax(logits / ``temperature``)."""

    greedy: bool
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def sampling_options(
    *, greedy: bool, temperature: float | None, top_k: int, top_p: float | None
) -> SamplingOptions:
    """Check every documented bound and resolve the defaults.

    ``temperature``: finite and >= 0; ``None`` (unset) means 1; 0 means greedy. ``top_k``: >= 0, 0 keeps all
    words. ``top_p``: in (0, 1]; ``None`` means 1. The bounds are checked whatever the strategy, so a
    request is valid or not on its own terms.

    Raises:
        InvalidArgument: naming ``temperature``, ``top_k`` or ``top_p``.
    """
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidArgument(
            f"must be a finite number >= 0 (0: greedy; unset: 1), got {temperature}", field="temperature"
        )
    if top_k < 0:
        raise InvalidArgument(f"must be >= 0 (0 keeps all words), got {top_k}", field="top_k")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidArgument(f"must be in (0, 1] (unset: 1), got {top_p}", field="top_p")
    temperature = 1.0 if temperature is None else temperature
    return SamplingOptions(
        greedy=greedy or temperature == 0,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0 if top_p is None else top_p,
    )


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
    options: SamplingOptions,
    *,
    seed: int = 0,
    device: torch.device,
) -> Sampled:
    """Feed ``prompt_ids`` from a zero state, then generate ``num_words`` words, each fed back as the next
    input (the notebook's loop). ``log_probability`` sums the natural-log probabilities of the generated
    words at temperature 1.

    Raises:
        FailedPrecondition: the model's outputs are not finite.
    """
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
        if options.greedy:
            word = int(torch.argmax(last))
        else:
            scores = filter_logits(last, options.temperature, options.top_k, options.top_p)
            word = int(torch.multinomial(scores.exp(), 1, generator=generator))
        total += float(torch.log_softmax(last.double(), dim=-1)[word])
        words.append(word)
        logits, state = model(torch.tensor([[word]], device=device), state)
        last = logits[-1].cpu()
    return Sampled(words, total)
