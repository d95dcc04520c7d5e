"""Perplexity over every predicted token, against a reference written here: each stream run in one piece
through the model's own layers (no chunking, no padding, no masking), the cross-entropy taken from a
float64 log-softmax by hand."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.sequence.lm import evaluation
from nnprobe_services.sequence.lm.model import LanguageModel, TrainingConfig

VOCAB = 11
CPU = torch.device("cpu")


def small_model(seed: int, layers: int = 2) -> LanguageModel:
    config = TrainingConfig(embed_size=5, hidden_size=6, num_layers=layers, dropout=0.3)
    model = LanguageModel(VOCAB, config)
    model.initialise(seed, 0.0)
    return model


@torch.no_grad()
def reference(model: LanguageModel, ids: torch.Tensor, streams: int) -> tuple[float, int]:
    """Sum of -log p(target) over the targets 1..N-1 cut as numpy.array_split cuts them, each stream
    read in one piece from a zero state."""
    total, count = 0.0, 0
    for targets in np.array_split(np.arange(1, ids.numel()), streams):
        a, b = int(targets[0]), int(targets[-1]) + 1
        x = model.embed(ids[a - 1 : b - 1][None])
        for layer in model.layers:
            x, _ = layer(x)  # nn.LSTM starts from zeros when no state is given
        log_p = torch.log_softmax(model.linear(x[0]).double(), dim=-1)
        total -= float(log_p[torch.arange(b - a), ids[a:b]].sum())
        count += b - a
    return total / count, count


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(2, 90),
    streams=st.integers(1, 9),
    length=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_every_predicted_token_is_counted_once_with_its_stream_context(tokens, streams, length, seed):
    streams = min(streams, tokens - 1)
    ids = torch.randint(0, VOCAB, (tokens,), generator=torch.Generator().manual_seed(seed))
    model = small_model(seed)
    loss, count = evaluation.evaluate(model, ids, streams, length, CPU)
    expected_loss, expected_count = reference(model, ids, streams)
    assert count == expected_count == tokens - 1
    assert loss == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    assert model.training  # the model's mode is restored


def test_one_stream_is_the_full_context_reading():
    """S = 1 predicts token t from tokens 0..t-1, whatever the chunk length (Zaremba et al.'s test)."""
    ids = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(3))
    model = small_model(3).eval()
    losses = {length: evaluation.evaluate(model, ids, 1, length, CPU)[0] for length in (1, 5, 63, 200)}
    expected, _ = reference(model, ids, 1)
    assert all(value == pytest.approx(expected, rel=1e-5) for value in losses.values()), losses


def test_ptb_sized_splits_lose_no_token():
    """The PTB test split (82,430 tokens) in 20 streams: 82,429 predicted tokens, not 82,400."""
    bounds = evaluation.stream_bounds(82_430, 20)
    assert bounds[0][0] == 1 and bounds[-1][1] == 82_430
    assert all(a == previous_end for (a, _), (_, previous_end) in zip(bounds[1:], bounds, strict=False))
    assert sum(b - a for a, b in bounds) == 82_429
    assert sorted({b - a for a, b in bounds}) == [4121, 4122]  # 82,429 = 20 x 4121 + 9


def test_zero_output_layer_gives_the_vocabulary_size_as_perplexity():
    """Uniform predictions: perplexity = V exactly (closed form), over all N - 1 tokens."""
    model = small_model(0)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.zero_()
    ids = torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(0))
    loss, count = evaluation.evaluate(model, ids, 3, 7, CPU)
    assert evaluation.perplexity(loss) == pytest.approx(VOCAB, rel=1e-6) and count == 299


def test_too_few_tokens_for_the_streams_names_the_field():
    evaluation.check_streams(5, 4, "batch_size")  # 4 predicted tokens feed 4 streams
    with pytest.raises(InvalidArgument) as info:
        evaluation.check_streams(5, 5, "batch_size", "the valid split")
    assert info.value.field == "batch_size" and "the valid split has 5 tokens (4 predicted)" in str(
        info.value
    )
    with pytest.raises(ValueError):
        evaluation.stream_bounds(3, 3)


def test_perplexity_overflows_to_infinity():
    assert evaluation.perplexity(math.log(120.7)) == pytest.approx(120.7)
    assert evaluation.perplexity(800.0) == math.inf
