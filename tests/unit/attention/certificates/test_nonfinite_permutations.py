"""A model finite on X but not on some permuted PX (here f(X) = X + log X[:, :1, :1], NaN once a negative
value is moved to the first token) fails with an infinite deviation and ratio, never NaN, at the node
that reads the first token."""

import itertools
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.attention.certificates import certify
from torch import nn

from tests.support.token_models import export_bytes, load_exported

B, T, D = 1, 4, 2


class LogOfFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.log(x[:, :1, :1])


GRAPHS = None


def graphs():
    global GRAPHS
    if GRAPHS is None:
        data = export_bytes(LogOfFirst(), (B, T, D))
        GRAPHS = load_exported(data, torch.float64), load_exported(data, torch.float32)
    return GRAPHS


@settings(max_examples=30, deadline=None)
@given(
    magnitudes=st.lists(st.floats(0.25, 4.0, width=32), min_size=T, max_size=T, unique=True),
    negative=st.lists(st.booleans(), min_size=T, max_size=T),
)
def test_an_output_that_turns_non_finite_under_a_permutation_fails_with_infinite_deviation(
    magnitudes, negative
):
    negative[0] = False  # f(X) itself is finite
    column = np.array([-m if n else m for m, n in zip(magnitudes, negative, strict=True)])
    x = torch.from_numpy(np.stack([column, np.ones(T)], axis=-1)[None]).to(torch.float64)
    graph64, graph32 = graphs()
    perms = certify.permutations(T, exhaustive=True, samples=0, seed=0)
    result = certify.certify(graph64, graph32, x, perms, action="equivariance", exhaustive=True)
    # Brute force: a permutation whose first token is negative makes log NaN.
    with torch.no_grad():
        some_nan = any(
            not torch.isfinite(graph64(x[:, list(p)])).all() for p in itertools.permutations(range(T))
        )
    assert some_nan == any(negative)
    assert not math.isnan(result.deviation) and not math.isnan(result.ratio)
    assert not math.isnan(result.mean_deviation) and not math.isnan(result.deviation_float64)
    assert not result.holds  # the first token is read: asymmetric for distinct tokens
    if some_nan:
        assert result.deviation == math.inf and result.ratio == math.inf
        assert column[result.worst_permutation[0]] < 0
    assert result.breaking is not None and result.breaking.target == "aten.slice.Tensor"
