"""model_certificate on torch.export archives whose graphs cast (x.float(), .to(torch.bfloat16), ...):
torch.export records the exported dtype before each cast, which the float64 load must not enforce. A
per-token cast keeps the model equivariant; the verdict and the output are checked against the model run
here by plain indexing."""

import io
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.attention import workflow
from nnprobe_services.attention.certificates.plans import ModelCheckSpec, TokenModel
from nnprobe_services.attention.plans import Limits
from torch import nn

B, T, D = 2, 4, 8
CASTS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


class CastPerToken(nn.Module):
    """Linear, a round trip through ``low`` and back to ``high`` (elementwise: equivariant), tanh."""

    def __init__(self, low: torch.dtype, high: torch.dtype):
        super().__init__()
        self.linear = nn.Linear(D, D)
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x).to(self.low).to(self.high)) + x


ARCHIVES: dict[tuple[torch.dtype, torch.dtype], bytes] = {}


def archive(low, high):
    if (low, high) not in ARCHIVES:
        torch.manual_seed(0)
        buffer = io.BytesIO()
        torch.export.save(
            torch.export.export(CastPerToken(low, high).eval(), (torch.randn(B, T, D),)), buffer
        )
        ARCHIVES[(low, high)] = buffer.getvalue()
    return ARCHIVES[(low, high)]


def resolver(data):
    def resolve(name, version, dtype):
        module = torch.export.load(io.BytesIO(data)).module().to(dtype)
        return TokenModel(name, 1, module, (B, T, D), None, (True, True, True))

    return resolve


@settings(max_examples=12, deadline=None)
@given(low=st.sampled_from(CASTS), high=st.sampled_from(CASTS), seed=st.integers(0, 100))
def test_a_model_that_casts_inside_is_certified_not_refused(low, high, seed):
    data = archive(low, high)
    x = np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)
    spec = ModelCheckSpec(model="cast", action="equivariance", x=x)
    limits = Limits(max_tensor_elements=10**6, max_permutations=10**6)
    result = workflow.model_certificate(spec, resolver(data), limits, torch.device("cpu"), lambda: False)
    # The float32 archive as exported (its dtype checks left in), run here by plain indexing.
    served = torch.export.load(io.BytesIO(data)).module()
    with torch.no_grad():
        reference = served(torch.from_numpy(x)).double()
        errors = [
            float((served(torch.from_numpy(x[:, list(p)])).double() - reference[:, list(p)]).abs().max())
            for p in itertools.permutations(range(T))
        ]
    assert np.array_equal(result.output.astype(np.float64), reference.numpy())
    assert result.deviation == pytest.approx(max(errors), abs=0, rel=0)
    assert result.permutations_checked == 24 and result.holds
