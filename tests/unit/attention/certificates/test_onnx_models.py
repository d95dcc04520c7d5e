"""certify on an ONNX export converted by onnx2torch (through the repository's loader, which also retypes its
float32 casts): the positional Add is named in the converted graph."""

import pytest
import torch
from nnprobe_services.attention.certificates import certify, noise
from nnprobe_services.repository.loading import load_graph

from tests.support.token_models import EncoderModel, brute_force_errors, export_onnx

B, T, D = 2, 4, 8


def onnx_loads(model, tmp_path):
    path = export_onnx(model, (B, T, D), tmp_path / "model.onnx")
    return (load_graph(path, dtype=dtype) for dtype in (torch.float64, torch.float32))


@pytest.mark.parametrize("positions", [False, True])
def test_onnx_encoder_layer(positions, tmp_path):
    torch.manual_seed(5)
    model = EncoderModel(T, D, positions=positions)
    graph64, graph32 = onnx_loads(model, tmp_path)
    x = noise.draw_input((B, T, D), 5)
    perms = certify.permutations(T, exhaustive=True, samples=0, seed=0)
    result = certify.certify(graph64, graph32, x, perms, action="equivariance", exhaustive=True)
    errors64 = brute_force_errors(graph64, x, invariant=False, t=T)
    assert result.deviation_float64 == pytest.approx(max(errors64.values()), rel=1e-12, abs=1e-300)
    with torch.no_grad():
        eager = model.double()(x)
    assert torch.allclose(graph64(x), eager, rtol=0, atol=1e-12)  # the conversion is the model, in float64
    if not positions:
        assert result.holds and result.ratio <= 3.0 and result.breaking is None
        return
    assert not result.holds
    node = result.breaking
    assert node is not None
    assert (node.name, node.op, node.target) == ("add", "call_module", "Add (OnnxBinaryMathOperation)")
    p = result.worst_permutation
    pos = model.positions.detach().double()
    assert node.deviation == pytest.approx(float((pos - pos[:, p]).abs().max()), rel=1e-12)
