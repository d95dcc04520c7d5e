"""Sampling options: every documented bound enforced with the field named; temperature 0 is greedy."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.sequence.lm import sampling
from nnprobe_services.sequence.lm.model import LanguageModel, TrainingConfig

floats = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0])
)


def first_violation(temperature, top_k, top_p):
    """The documented contract, restated: temperature unset or finite >= 0; top_k >= 0; top_p unset or
    in (0, 1]."""
    if temperature is not None and (math.isnan(temperature) or math.isinf(temperature) or temperature < 0):
        return "temperature"
    if top_k < 0:
        return "top_k"
    if top_p is not None and not (0 < top_p <= 1):  # NaN fails both comparisons
        return "top_p"
    return None


@given(
    greedy=st.booleans(),
    temperature=floats,
    top_k=st.integers(-(2**63), 2**63 - 1),
    top_p=floats,
)
def test_every_bound_is_enforced_with_its_field(greedy, temperature, top_k, top_p):
    expected = first_violation(temperature, top_k, top_p)
    if expected is not None:
        with pytest.raises(InvalidArgument) as info:
            sampling.sampling_options(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        assert info.value.field == expected
        return
    options = sampling.sampling_options(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
    assert options.temperature == (1.0 if temperature is None else temperature)
    assert options.top_p == (1.0 if top_p is None else top_p)
    assert options.top_k == top_k
    assert options.greedy == (greedy or temperature == 0)


def argmax_reference(model: LanguageModel, prompt: list[int], num_words: int) -> list[int]:
    """Greedy decoding written out: run the layers on the whole history at every step, take the argmax."""
    history = list(prompt)
    with torch.no_grad():
        for _ in range(num_words):
            x = model.embed(torch.tensor([history]))
            for layer in model.layers:
                x, _ = layer(x)
            history.append(int(torch.argmax(model.linear(x[0, -1]))))
    return history[len(prompt) :]


@pytest.mark.parametrize("seed", range(5))
def test_temperature_zero_is_greedy_whatever_the_seed(seed):
    model = LanguageModel(13, TrainingConfig(embed_size=6, hidden_size=8, num_layers=2)).eval()
    model.initialise(7, 0.5)
    options = sampling.sampling_options(greedy=False, temperature=0.0, top_k=0, top_p=None)
    result = sampling.sample(model, [1, 4], 12, options, seed=seed, device=torch.device("cpu"))
    assert result.word_ids == argmax_reference(model, [1, 4], 12)


def test_unset_temperature_and_top_p_are_one():
    options = sampling.sampling_options(greedy=False, temperature=None, top_k=0, top_p=None)
    assert options == sampling.SamplingOptions(greedy=False, temperature=1.0, top_k=0, top_p=1.0)
