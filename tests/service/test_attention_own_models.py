"""The SDK against an in-process AttentionService: symmetry certificates of uploaded token models (an exported
nn.TransformerEncoderLayer, with and without a learned positional embedding, pooled), and every bad request
refused naming its field."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from nnprobe import NnprobeError
from nnprobe.aio import AttentionClient as AsyncAttentionClient
from nnprobe.cli import main

from tests.support.token_models import EncoderModel, brute_force_errors, export_bytes, load_exported

B, T, D = 2, 4, 8


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("token_models")
    torch.manual_seed(9)
    built = {
        "encoder": EncoderModel(T, D),
        "encoder-positions": EncoderModel(T, D, positions=True),
        "mean-pooled": EncoderModel(T, D, pool="mean"),
        "first-token": EncoderModel(T, D, pool="first"),
    }
    paths = {}
    for name, model in built.items():
        paths[name] = folder / f"{name}.pt2"
        paths[name].write_bytes(export_bytes(model, (B, T, D)))
    return paths


@pytest.fixture(scope="module")
def uploaded(attention, archives):
    for name, path in archives.items():
        config = {"task": "token_model", "d_model": D, "batch_size": B, "sequence_length": T}
        if name in ("mean-pooled", "first-token"):
            config["pooled"] = True
        attention.upload_model(path, name=name, config=config, progress=False)
    return archives


def test_an_exported_encoder_layer_holds_over_all_permutations(attention, uploaded):
    result = attention.check_permutation_equivariance(model="encoder", seed=1)
    c = result.certificate
    assert result.holds and result.exhaustive and result.permutations_checked == 24
    assert (c.model, c.model_version, c.input_shape) == ("encoder", 1, [B, T, D])
    assert c.ratio <= 3 and c.first_breaking_node is None
    assert c.deviation_float64 <= 1e-13 * float(np.abs(result.output).max())
    assert result.output.shape == (B, T, D) and result.output.dtype == np.float32


def test_a_learned_positional_embedding_fails_at_the_add(attention, uploaded):
    x = np.random.default_rng(3).standard_normal((B, T, D)).astype(np.float32)
    result = attention.check_permutation_equivariance(x, model="encoder-positions")
    graph64 = load_exported(uploaded["encoder-positions"].read_bytes(), torch.float64)
    errors = brute_force_errors(graph64, torch.from_numpy(x).double(), invariant=False, t=T)
    c = result.certificate
    assert not result.holds and c.ratio > 1e4
    assert c.deviation_float64 == pytest.approx(max(errors.values()), rel=1e-9)
    assert (c.first_breaking_node.name, c.first_breaking_node.target) == ("add", "aten.add.Tensor")


def test_pooling_certificates_asyncio(attention_server, uploaded):
    async def main():
        async with AsyncAttentionClient(attention_server, timeout=60) as client:
            mean = await client.check_pooling_invariance(model="mean-pooled", seed=2)
            first = await client.check_pooling_invariance(model="first-token", seed=2)
        return mean, first

    mean, first = asyncio.run(main())
    assert mean.holds and mean.certificate.ratio <= 3 and mean.output.shape == (B, D)
    assert not first.holds and first.certificate.first_breaking_node.target == "aten.select.int"


@pytest.mark.parametrize(
    ("call", "kwargs", "code", "field"),
    [
        ("check_permutation_equivariance", {"model": "nobody"}, "NOT_FOUND", "model"),
        (
            "check_permutation_equivariance",
            {"model": "encoder", "model_version": 9},
            "NOT_FOUND",
            "model_version",
        ),
        ("check_permutation_equivariance", {"model": "mean-pooled"}, "INVALID_ARGUMENT", "model"),
        (
            "check_permutation_equivariance",
            {"model": "encoder", "noise_ratio_threshold": 0.5},
            "INVALID_ARGUMENT",
            "noise_ratio_threshold",
        ),
        (
            "check_permutation_equivariance",
            {"model": "encoder", "x": np.zeros((B, T + 1, D))},
            "INVALID_ARGUMENT",
            "x",
        ),
        (
            "check_pooling_invariance",
            {"model": "first-token", "strategy": "exhaustive", "x": np.zeros((1, 9, D))},
            "INVALID_ARGUMENT",
            "x",
        ),
    ],
)
def test_bad_requests_name_the_field(attention, uploaded, call, kwargs, code, field):
    with pytest.raises(NnprobeError) as error:
        getattr(attention, call)(**kwargs)
    assert error.value.code.name == code
    assert [v.field for v in error.value.field_violations] == [field]


def test_the_cli_prints_the_certificate(attention_server, uploaded, capsys):
    status = main(
        ["attention", "equivariance", "--model", "encoder-positions:1", "--address", attention_server]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "encoder-positions, permutation equivariance: f(PX) == P f(X)" in out
    assert "encoder-positions version 1" in out and "(holds when <= 10)" in out
    assert "add (call_function aten.add.Tensor), shape [2, 4, 8]" in out
    status = main(
        ["attention", "pooling", "--model", "encoder", "--heads", "2", "--address", attention_server]
    )
    assert status == 2 and "--heads describes a built attention layer" in capsys.readouterr().err


def test_a_deadline_stops_a_long_certificate(attention, uploaded):
    with pytest.raises(NnprobeError) as error:
        attention.check_permutation_equivariance(
            model="encoder", strategy="sampled", num_samples=200_000, timeout=1.0
        )
    assert error.value.code.name == "DEADLINE_EXCEEDED"
    assert attention.check_permutation_equivariance(model="encoder").holds  # the server is free again
