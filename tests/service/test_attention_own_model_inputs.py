"""The SDK against an in-process AttentionService on the inputs a newcomer gives an uploaded token model: a
model exported with dynamic B and T and a configuration that fixes neither takes any x of its d_model; a
model exported in training mode is refused at upload, and one that draws random numbers is refused, not
certified; a sequence too long to sample is refused before any
allocation; none of them is INTERNAL."""

from __future__ import annotations

import io
import itertools
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import NnprobeError
from torch import nn

D = 8


def _archive(model: nn.Module, folder, name: str, dynamic_tokens: bool):
    batch = torch.export.Dim("batch", min=1, max=64)
    shapes = {0: batch, 1: torch.export.Dim("tokens", min=1, max=4096)} if dynamic_tokens else {0: batch}
    program = torch.export.export(model, (torch.randn(2, 5, D),), dynamic_shapes=(shapes,))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path = folder / f"{name}.pt2"
    path.write_bytes(buffer.getvalue())
    return path


class TrainingDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.linear(x), 0.5, training=True)


class Noisy(nn.Module):
    """Randomness the graph does not mark as training: noise drawn on every call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 0.1 * torch.rand_like(x)


@pytest.fixture(scope="module")
def models(attention, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own_inputs")
    torch.manual_seed(4)
    layer = nn.TransformerEncoderLayer(D, 2, dim_feedforward=16, dropout=0.0, batch_first=True).eval()
    config = {"task": "token_model", "d_model": D}
    for name, model, dynamic in (("dynamic", layer, True), ("noisy", Noisy(), False)):
        attention.upload_model(
            _archive(model, folder, name, dynamic), name=name, config=config, progress=False
        )
    return layer.double()


def test_a_dynamic_model_takes_any_b_and_t_when_its_configuration_fixes_neither(attention, models):
    x = np.random.default_rng(0).standard_normal((3, 3, D)).astype(np.float32)
    result = attention.check_permutation_equivariance(x, model="dynamic")
    assert result.holds and result.permutations_checked == 6 and result.certificate.input_shape == [3, 3, D]
    # The float32 output against the layer itself in float64, evaluated here.
    with torch.no_grad():
        expected = models(torch.from_numpy(x).double()).numpy()
        errors = [
            np.abs(models(torch.from_numpy(x[:, list(p)]).double()).numpy() - expected[:, list(p)]).max()
            for p in itertools.permutations(range(3))
        ]
    assert np.abs(result.output - expected).max() < 1e-5
    assert result.certificate.deviation_float64 == pytest.approx(max(errors), abs=1e-14)
    one = attention.check_permutation_equivariance(x[:1, :1], model="dynamic")
    assert one.holds and one.permutations_checked == 1


def test_d_model_stays_fixed(attention, models):
    with pytest.raises(NnprobeError) as raised:
        attention.check_permutation_equivariance(np.zeros((2, 5, 6), np.float32), model="dynamic")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("x: ") and "[B, T, 8]" in raised.value.message


def test_an_export_in_training_mode_is_refused_at_upload_on_file(attention, tmp_path):
    torch.manual_seed(4)
    path = _archive(TrainingDropout(), tmp_path, "dropout", False)
    with pytest.raises(NnprobeError) as raised:
        attention.upload_model(
            path, name="dropout", config={"task": "token_model", "d_model": D}, progress=False
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("file: was exported in training mode (dropout")
    assert "dropout" not in [m.name for m in attention.list_models()]


def test_a_model_drawing_random_numbers_is_refused_not_certified(attention, models):
    for check in (attention.check_permutation_equivariance, attention.check_pooling_invariance):
        with pytest.raises(NnprobeError) as raised:
            check(model="noisy")
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.message.startswith("model: the model is not deterministic")


def test_a_hundred_thousand_tokens_are_refused_on_x(attention, models):
    with pytest.raises(NnprobeError) as raised:
        attention.check_permutation_equivariance(np.zeros((1, 100_000, D), np.float32), model="dynamic")
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.message.startswith("x: sampled checking of T=100000 tokens")
    assert attention.check_permutation_equivariance(model="dynamic").holds  # the server still answers


def test_concurrent_certificates_each_load_their_model(attention, models):
    """Two compute threads load torch.export archives at once; each call gets its own verdict."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1, 3, D)).astype(np.float32) for _ in range(6)]

    def certify(x):
        try:
            return attention.check_permutation_equivariance(x, model="dynamic").holds
        except NnprobeError as error:
            return error.code, error.message

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(certify, inputs))
    refused = [a for a in answers if a is not True]
    # The compute queue may refuse a call when full (RESOURCE_EXHAUSTED); no call may fail to load.
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in refused), refused
    assert len(refused) < len(answers)


def test_a_call_past_its_deadline_leaves_the_next_one_loading(attention, models):
    x = np.zeros((1, 8, D), np.float32)
    with pytest.raises(NnprobeError) as raised:
        attention.check_permutation_equivariance(x, model="dynamic", strategy="exhaustive", timeout=0.05)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(3):  # while the abandoned call may still be loading in its compute thread
        assert attention.check_permutation_equivariance(model="dynamic").holds


@pytest.fixture(scope="module")
def fixed_length(attention, tmp_path_factory):
    """A layer exported with a dynamic batch and a fixed T = 5 its configuration does not declare."""
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(D, 2, dim_feedforward=16, dropout=0.0, batch_first=True).eval()
    path = _archive(layer, tmp_path_factory.mktemp("fixed"), "fixed-length", dynamic_tokens=False)
    attention.upload_model(
        path, name="fixed-length", config={"task": "token_model", "d_model": D}, progress=False
    )
    return layer


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(1, 9).filter(lambda t: t != 5), b=st.integers(1, 3))
def test_a_length_the_export_fixed_is_refused_on_x(attention, fixed_length, t, b):
    with pytest.raises(NnprobeError) as raised:
        attention.check_permutation_equivariance(np.zeros((b, t, D), np.float32), model="fixed-length")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("x: the model does not take an input of this shape")
    assert "torch.export.Dim" in raised.value.message


def test_the_fixed_length_with_any_batch_holds(attention, fixed_length):
    x = np.random.default_rng(1).standard_normal((3, 5, D)).astype(np.float32)
    result = attention.check_permutation_equivariance(x, model="fixed-length")
    with torch.no_grad():
        expected = fixed_length(torch.from_numpy(x)).numpy()
    assert result.holds and np.abs(result.output - expected).max() < 1e-6


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.integers(-(2**31), -1))
def test_a_negative_version_is_invalid_not_missing(attention, models, version):
    with pytest.raises(NnprobeError) as raised:
        attention.check_permutation_equivariance(model="dynamic", model_version=version)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("model_version: must be >= 0")
