"""The text sample of an evaluation: ``SAMPLE_WORDS`` words drawn from the model right after a training
run's evaluation, for the job's TensorBoard log (tag ``samples/text``).

It is the ``Sample`` RPC's default draw: after ``<eos>`` (the start of a sentence; word id 0 in a
vocabulary without ``<eos>``), multinomial at temperature 1 with every word kept, the model in eval mode
(no dropout), under ``torch.no_grad``, with ``sampling.sample``'s own CPU ``torch.Generator`` seeded with
``sample_seed(job seed, step)``. Nothing else is drawn from: neither training's dropout generator nor
PyTorch's global generator moves, so every loss and perplexity is the same with or without samples, and a
job gives the same text at the same step on a resume, a takeover, with data-parallel workers (rank 0 draws)
and on a re-run.
"""

from __future__ import annotations

import torch

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.sequence.lm import sampling
from nnprobe_services.sequence.lm.corpus import EOS
from nnprobe_services.sequence.lm.model import LanguageModel

#: Words per evaluation sample.
SAMPLE_WORDS = 30
#: Multiplier of the job's seed in ``sample_seed`` (a prime, as the dropout generator's seed mixing).
SEED_MULTIPLIER = 1_000_003
#: The text of a sample from a model whose outputs are not finite.
NOT_FINITE = "(no sample: the model's outputs are not finite)"


def sample_seed(seed: int, step: int) -> int:
    """The generator seed of the sample at ``step`` of a job seeded ``seed``:
    (seed * 1_000_003 + step) mod 2**63 (a valid ``torch.Generator.manual_seed`` argument)."""
    return (seed * SEED_MULTIPLIER + step) % 2**63


def start_ids(vocab: list[str]) -> list[int]:
    """The prompt: ``<eos>``'s id, as the ``Sample`` RPC without prompt or start word; [0] without it."""
    return [vocab.index(EOS)] if EOS in vocab else [0]


def text_of(words: list[str]) -> str:
    """Words as the ``Sample`` RPC writes them: each followed by a space, ``<eos>`` as a line break."""
    return "".join("\n" if w == EOS else w + " " for w in words)


def evaluation_sample(
    model: LanguageModel,
    vocab: list[str],
    seed: int,
    step: int,
    device: torch.device,
    num_words: int = SAMPLE_WORDS,
) -> str:
    """``num_words`` words from ``model`` (see the module), as text; the model's train/eval mode is kept.

    Raises:
    A model whose outputs are not finite (diverged training) gives ``NOT_FINITE`` instead of words.
    """
    was_training = model.training
    model.eval()
    try:
        options = sampling.sampling_options(greedy=False, temperature=None, top_k=0, top_p=None)
        drawn = sampling.sample(
            model, start_ids(vocab), num_words, options, seed=sample_seed(seed, step), device=device
        )
    except FailedPrecondition:
        return NOT_FINITE
    finally:
        model.train(was_training)
    return text_of([vocab[i] for i in drawn.word_ids])


__all__ = ["NOT_FINITE", "SAMPLE_WORDS", "evaluation_sample", "sample_seed", "start_ids", "text_of"]
