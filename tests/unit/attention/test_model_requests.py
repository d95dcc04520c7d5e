"""A Check* request naming a repository token model, from request to reply (convert + workflow), with the
repository replaced by a resolver over exported archives; numbers checked by brute force."""

import numpy as np
import pytest
import torch
from nnprobe import tensors
from nnprobe.api.attention.v1 import attention_pb2 as pb
from nnprobe.api.common.v1 import common_pb2
from nnprobe_services.attention import convert, workflow
from nnprobe_services.attention.certificates.plans import TokenModel
from nnprobe_services.attention.plans import Limits
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, never

from tests.support.token_models import EncoderModel, brute_force_errors, export_bytes, load_exported

B, T, D = 2, 4, 8
LIMITS = Limits(100_000, 1_000_000)
CPU = torch.device("cpu")


def resolver(archives, shapes):
    def resolve(name, version, dtype):
        if name not in archives:
            raise NotFound(f"no model {name!r}", field="model")
        return TokenModel(name, 3, load_exported(archives[name], dtype), shapes.get(name))

    return resolve


@pytest.fixture(scope="module")
def resolve():
    torch.manual_seed(8)
    archives = {
        "encoder": export_bytes(EncoderModel(T, D), (B, T, D)),
        "positions": export_bytes(EncoderModel(T, D, positions=True), (B, T, D)),
        "first": export_bytes(EncoderModel(T, D, pool="first"), (B, T, D)),
    }
    return resolver(archives, {"encoder": (B, T, D), "positions": (B, T, D)})


def equivariance(request, resolve):
    spec = convert.model_check(request, "equivariance", LIMITS)
    return convert.model_equivariance_reply(workflow.model_certificate(spec, resolve, LIMITS, CPU, never))


def test_an_encoder_layer_holds_and_the_reply_carries_the_certificate(resolve):
    reply = equivariance(pb.CheckPermutationEquivarianceRequest(model="encoder", seed=4), resolve)
    c = reply.certificate
    assert reply.holds and reply.exhaustive and reply.permutations_checked == 24
    assert (c.model, c.model_version, list(c.input_shape)) == ("encoder", 3, [B, T, D])
    assert c.ratio == pytest.approx(c.deviation / max(c.noise, c.noise_floor)) and c.ratio <= 3
    assert reply.max_deviation == c.deviation and not c.HasField("first_breaking_node")
    assert reply.tolerance == pytest.approx(10 * max(c.noise, c.noise_floor))
    assert tensors.to_numpy(reply.output).shape == (B, T, D)


def test_a_given_input_is_used_and_the_positional_add_is_named(resolve):
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    request = pb.CheckPermutationEquivarianceRequest(
        model="positions", x=tensors.to_tensor(x), noise_ratio_threshold=50.0
    )
    reply = equivariance(request, resolve)
    graph64 = resolve("positions", 0, torch.float64).graph
    errors = brute_force_errors(graph64, torch.from_numpy(x).double(), invariant=False, t=T)
    assert not reply.holds and reply.certificate.threshold == 50.0
    assert reply.certificate.deviation_float64 == pytest.approx(max(errors.values()), rel=1e-12)
    node = reply.certificate.first_breaking_node
    assert (node.name, node.op, node.target) == ("add", "call_function", "aten.add.Tensor")


def test_pooling_needs_x_when_no_shape_is_configured_and_names_the_select(resolve):
    request = pb.CheckPoolingInvarianceRequest(model="first")
    with pytest.raises(FailedPrecondition) as error:
        workflow.model_certificate(
            convert.model_check(request, "invariance", LIMITS), resolve, LIMITS, CPU, never
        )
    assert error.value.field == "x"
    request.x.CopyFrom(tensors.to_tensor(np.ones((B, T, D), np.float32) * np.arange(T)[:, None]))
    spec = convert.model_check(request, "invariance", LIMITS)
    reply = convert.model_pooling_reply(workflow.model_certificate(spec, resolve, LIMITS, CPU, never))
    assert not reply.holds and reply.certificate.first_breaking_node.target == "aten.select.int"
    assert tensors.to_numpy(reply.pooled).shape == (B, D)


@pytest.mark.parametrize(
    ("request_", "action", "field"),
    [
        (
            pb.CheckPermutationEquivarianceRequest(model="m", attention=pb.SelfAttention()),
            "equivariance",
            "attention",
        ),
        (pb.CheckPoolingInvarianceRequest(model="m", pooling=pb.POOLING_MAX), "invariance", "pooling"),
        (
            pb.CheckPermutationEquivarianceRequest(model="m", permutations=pb.PermutationOptions(strategy=9)),
            "equivariance",
            "permutations.strategy",
        ),
        (
            pb.CheckPermutationEquivarianceRequest(
                model="m", x=common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT64, shape=[2, 3], data=bytes(8))
            ),
            "equivariance",
            "x",
        ),
    ],
)
def test_malformed_model_requests_name_the_field(request_, action, field):
    with pytest.raises(InvalidArgument) as error:
        convert.model_check(request_, action, LIMITS)
    assert error.value.field == field


def test_an_unknown_model_is_not_found(resolve):
    spec = convert.model_check(pb.CheckPermutationEquivarianceRequest(model="nobody"), "equivariance", LIMITS)
    with pytest.raises(NotFound) as error:
        workflow.model_certificate(spec, resolve, LIMITS, CPU, never)
    assert error.value.field == "model"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_version": 2}, "model_version"),
        ({"noise_ratio_threshold": 3.0}, "noise_ratio_threshold"),
        ({"seed": 5}, "seed"),
    ],
)
def test_model_fields_without_a_model_are_refused(fields, field):
    with pytest.raises(InvalidArgument) as error:
        convert.refuse_model_fields(pb.CheckPoolingInvarianceRequest(**fields))
    assert error.value.field == field


class MakesZeros(torch.nn.Module):
    def forward(self, x):
        return x + torch.zeros(x.shape, dtype=x.dtype, device="cpu")


def test_nodes_that_name_a_device_move_with_the_graph():
    graph = torch.export.export(MakesZeros(), (torch.randn(2, 3, 4),)).module()
    moved = workflow._on_device(graph, torch.device("meta"))
    named = [n.kwargs["device"] for n in moved.graph.nodes if "device" in n.kwargs]
    assert named == [torch.device("meta")]
    assert moved(torch.randn(2, 3, 4, device="meta")).device.type == "meta"
