"""check_permutation_equivariance(model=...) / check_pooling_invariance(model=...): the request fields sent,
the refusals raised before sending, the certificate read back and shown, the CLI's --model."""

import numpy as np
import pytest
from nnprobe import attention, tensors
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.cli import build_parser
from nnprobe.cli.attention_certificate import certificate_fields

LAYER = {
    "x": None,
    "sequence_length": 0,
    "model_dim": 0,
    "seed": 0,
    "weights": None,
    "heads": 1,
    "scale": None,
    "softmax": "row",
    "positional_encoding": None,
    "causal_mask": False,
    "dtype": None,
    "strategy": "auto",
    "num_samples": 0,
    "tolerance": None,
    "model": None,
    "model_version": 0,
    "noise_ratio_threshold": None,
}


def arguments(**changes):
    return {**LAYER, **changes}


def test_a_model_request_carries_only_the_model_fields():
    x = np.zeros((2, 3, 4), np.float32)
    request = attention.permutation_request(
        **arguments(model="enc", model_version=2, seed=7, x=x, noise_ratio_threshold=20.0, strategy="sampled")
    )
    assert not request.HasField("attention")
    assert (request.model, request.model_version, request.seed) == ("enc", 2, 7)
    assert request.noise_ratio_threshold == 20.0 and list(request.x.shape) == [2, 3, 4]
    assert request.permutations.strategy == pb.PERMUTATION_STRATEGY_SAMPLED
    pooled = attention.pooling_request(pooling="mean", **arguments(model="enc"))
    assert pooled.model == "enc" and pooled.pooling == pb.POOLING_UNSPECIFIED
    assert not pooled.HasField("x") and not pooled.HasField("noise_ratio_threshold")


def test_a_built_layer_request_is_unchanged():
    request = attention.permutation_request(**arguments(sequence_length=5, model_dim=8))
    assert request.attention.sequence_length == 5 and request.model == ""


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model": "enc", "heads": 2}, "heads"),
        ({"model": "enc", "sequence_length": 5}, "sequence_length"),
        ({"model_version": 3}, "model_version"),
        ({"noise_ratio_threshold": 5.0}, "noise_ratio_threshold"),
    ],
)
def test_mixed_arguments_are_refused_before_sending(changes, named):
    with pytest.raises(ValueError, match=named):
        attention.permutation_request(**arguments(**changes))


def test_pooling_other_than_the_default_with_a_model_is_refused():
    with pytest.raises(ValueError, match="pools inside itself"):
        attention.pooling_request(pooling="max", **arguments(model="enc"))


def reply(breaking=True):
    certificate = pb.SymmetryCertificate(
        model="enc",
        model_version=3,
        input_shape=[2, 4, 8],
        noise=2e-7,
        noise_floor=1e-7,
        deviation=0.5,
        deviation_float64=0.5,
        ratio=2.5e6,
        threshold=10,
    )
    if breaking:
        certificate.first_breaking_node.CopyFrom(
            pb.BreakingNode(
                name="add", op="call_function", target="aten.add.Tensor", deviation=0.4, shape=[2, 4, 8]
            )
        )
    output = tensors.to_tensor(np.zeros((2, 4, 8), np.float32))
    return pb.CheckPermutationEquivarianceResponse(holds=False, certificate=certificate, output=output)


def test_the_certificate_is_read_and_shown():
    result = attention.PermutationCheckResult._from(reply(), reply().output)
    c = result.certificate
    assert c.ratio == 2.5e6 and c.first_breaking_node.name == "add" and c.input_shape == [2, 4, 8]
    assert "ratio                2.5e+06" in repr(c) and "name='add'" in repr(c)
    assert "SymmetryCertificate" in repr(result) and "SymmetryCertificate" in result._repr_html_()
    lines = dict(certificate_fields(c))
    assert lines["first breaking node"] == "add (call_function aten.add.Tensor), shape [2, 4, 8]"
    assert lines["ratio deviation / noise"] == "2.5e+06 (holds when <= 10)"
    empty = pb.CheckPermutationEquivarianceResponse(output=tensors.to_tensor(np.zeros((4, 8))))
    plain = attention.PermutationCheckResult._from(empty, empty.output)
    assert plain.certificate is None


def test_cli_model_reference():
    args = build_parser().parse_args(
        ["attention", "equivariance", "--model", "enc:4", "--noise-ratio-threshold", "20"]
    )
    assert args.model == ("enc", 4) and args.noise_ratio_threshold == 20.0
    assert build_parser().parse_args(["attention", "pooling", "--model", "enc"]).model == ("enc", 0)


def test_cli_refuses_a_version_that_is_not_a_number(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["attention", "pooling", "--model", "enc:"])
    assert "NAME:VERSION" in capsys.readouterr().err
