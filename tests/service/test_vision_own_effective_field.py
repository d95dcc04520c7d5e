"""The effective field of the user's own model and tiling advice for its map, through the SDK: a small CNN
made here is uploaded as torch.export and ONNX; its effective field through its trained weights, over random
inputs and over the user's images, equals autograd through the same network written here with the same
seed and inputs, is the same on every call, and pins its protocol; the tiling plan's halo is the one worked
out by hand and its proof runs the ONNX model tiled and whole."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient
from nnprobe.vision import Layer

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": tiny_cnn.MEAN.ravel().tolist(), "std": tiny_cnn.STD.ravel().tolist()},
}
SEED = 3


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    net = tiny_cnn.network(seed=SEED)
    tiny_cnn.write(folder / "net.onnx", tiny_cnn.onnx_bytes(net))
    tiny_cnn.write(folder / "net.pt2", tiny_cnn.pt2_bytes(net))
    tiny_cnn.write(folder / "tokens.onnx", tiny_cnn.onnx_bytes(PatchTokens()))
    tiny_cnn.write(folder / "tokens.pt2", tiny_cnn.pt2_bytes(PatchTokens()))
    _, address = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=tmp_path_factory.mktemp("repository")
    )
    with VisionClient(address, timeout=120) as vision:
        for fmt in ("onnx", "pt2"):
            vision.upload_model(folder / f"net.{fmt}", name=f"own-{fmt}", config=CONFIG)
            vision.upload_model(folder / f"tokens.{fmt}", name=f"tokens-{fmt}", config=CONFIG)
        yield vision


class PatchTokens(torch.nn.Module):
    """A vision transformer's token path in small: 4 x 4 patches embedded (conv 4, stride 4) as a sequence
    (N, 16, 8) in row-major patch order, a per-token linear layer and ReLU, then mean pooling and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(SEED)
        self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, tiny_cnn.CLASSES)
        self.eval()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.mix(self.patch(x).flatten(2).transpose(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x).mean(1))


def features() -> torch.nn.Module:
    """The uploaded network up to its last feature map (conv 3x3, ReLU, max pool 2, conv 3x3): 6 x 6."""
    return tiny_cnn.network(seed=SEED)[:4]


def reference_map(inputs: list[torch.Tensor], unit: tuple[int, int]) -> np.ndarray:
    """Mean over inputs and channels of |d y / d x| for unit (x, y) summed over channels, by autograd here."""
    net, (ux, uy) = features(), unit
    total, count = torch.zeros(tiny_cnn.SIDE, tiny_cnn.SIDE, dtype=torch.float64), 0
    for batch in inputs:
        x = batch.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x)[:, :, uy, ux].sum(), x)
        total += grad.abs().double().sum(dim=(0, 1))
        count += batch.shape[0] * batch.shape[1]
    return (total / count).numpy()


def random_batches(seed: int, samples: int) -> list[torch.Tensor]:
    """The protocol's inputs: N(0, 1) from a generator seeded with ``seed``, drawn in batches of 4."""
    generator = torch.Generator().manual_seed(seed)
    side = tiny_cnn.SIDE
    return [
        torch.randn(min(4, samples - s), 3, side, side, generator=generator) for s in range(0, samples, 4)
    ]


@pytest.mark.parametrize("model", ["own-pt2", "own-onnx"])
def test_the_effective_field_of_trained_weights_is_autograd_through_the_model_and_reproducible(client, model):
    first = client.compute_receptive_field(model=model, effective_field=True, erf_samples=6, erf_seed=11)
    again = client.compute_receptive_field(model=model, effective_field=True, erf_samples=6, erf_seed=11)
    erf = first.effective_field
    assert (erf.x, erf.y) == (3, 3)  # the centre of the 6 x 6 map
    expected = reference_map(random_batches(11, 6), (3, 3))
    np.testing.assert_allclose(erf.gradient_map, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(again.effective_field.gradient_map - erf.gradient_map).max() <= 1e-6
    assert again.effective_field.gradient_map.tobytes() == erf.gradient_map.tobytes()
    protocol = erf.protocol
    assert protocol is not None
    assert (protocol.inputs, protocol.num_samples, protocol.seed) == ("normal(0, 1)", 6, 11)
    assert (protocol.weights, protocol.weight_seed, protocol.model_version) == ("trained", 0, 1)
    assert protocol.resolution == (tiny_cnn.SIDE, tiny_cnn.SIDE) and protocol.dtype == "float32"


@pytest.mark.parametrize("model", ["tokens-pt2", "tokens-onnx"])
def test_the_effective_field_of_a_trained_token_layer_is_autograd_through_its_patch_token(client, model):
    result = client.compute_receptive_field(model=model, effective_field=True, erf_samples=6, erf_seed=11)
    assert result.end_point in ("relu", "/Relu")  # the last layer with positions: mean pooling drops them
    erf = result.effective_field
    assert (erf.x, erf.y) == (2, 2)  # the centre of the 4 x 4 patch grid: token 2 * 4 + 2
    net, total = PatchTokens(), torch.zeros(tiny_cnn.SIDE, tiny_cnn.SIDE, dtype=torch.float64)
    for batch in random_batches(11, 6):
        x = batch.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net.tokens(x)[:, 2 * 4 + 2, :].sum(), x)
        total += grad.abs().double().sum(dim=(0, 1))
    expected = (total / (6 * 3)).numpy()
    np.testing.assert_allclose(erf.gradient_map, expected, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(expected) == 16 and expected[8:12, 8:12].all()  # its own 4 x 4 patch only


def test_an_unknown_end_point_of_a_graph_without_modules_names_only_what_it_has(client):
    with pytest.raises(NnprobeError) as caught:
        client.compute_receptive_field(model="tokens-onnx", end_point="relu")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message.endswith(
        "no layer 'relu' in tokens-onnx: use a node name from the response's layers"
    )
    with pytest.raises(NnprobeError) as modules:
        client.compute_receptive_field(model="tokens-pt2", end_point="nothing")
    assert "a module path, or a top-level module (patch, mix, head)" in modules.value.message


def test_the_effective_field_over_your_images_goes_through_the_models_preprocessing(client):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.uint8) for _ in range(5)]
    result = client.compute_receptive_field(model="own-pt2", effective_field=True, erf_images=images)
    pixels = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    inputs = tiny_cnn.normalised(pixels)
    expected = reference_map([inputs[:4], inputs[4:]], (3, 3))
    np.testing.assert_allclose(result.effective_field.gradient_map, expected, rtol=1e-5, atol=1e-7)
    protocol = result.effective_field.protocol
    assert protocol is not None and (protocol.inputs, protocol.num_samples) == ("images", 5)


def test_weights_the_model_has_not_are_refused_by_field(client):
    with pytest.raises(NnprobeError) as random:
        client.compute_receptive_field(model="own-onnx", effective_field=True, erf_weights="random")
    assert random.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "effective_field.weights" in str(random.value)
    with pytest.raises(NnprobeError) as trained:
        client.compute_receptive_field(
            [Layer("a", 3)], input_size=8, effective_field=True, erf_weights="trained"
        )
    assert trained.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "effective_field.weights" in str(trained.value)


def test_the_tiling_plan_of_the_model_and_its_proof(client):
    result = client.compute_receptive_field(model="own-onnx", tiling=4, prove_tiling=True)
    plan = result.tiling
    assert plan is not None and plan.layer == result.end_point
    # By hand: unit u of the last map (jump 2) owns pixels 2u, 2u + 1 and reads the pool's rows u .. u + 2,
    # pixels 2u .. 2u + 5, which the padded 3x3 convolution widens to 2u - 1 .. 2u + 6: 1 before (2 on the
    # grid of 2), 5 after (6).
    assert plan.alignment == (2, 2) and plan.halo == (2, 6, 2, 6)
    assert (
        plan.overlap == (8, 8) and plan.window == (12, 12) and plan.stride == (4, 4) and plan.tiles == (3, 3)
    )
    assert plan.proved and plan.weights == "trained" and plan.max_abs_diff < 1e-5
    with pytest.raises(NnprobeError) as odd:
        client.compute_receptive_field(model="own-onnx", tiling=(4, 3))
    assert odd.value.code == grpc.StatusCode.INVALID_ARGUMENT and "tiling.tile_width" in str(odd.value)
    with pytest.raises(NnprobeError) as fixed:  # a program exported for 16 x 16 inputs only
        client.compute_receptive_field(model="own-pt2", tiling=4, prove_tiling=True)
    assert fixed.value.code == grpc.StatusCode.FAILED_PRECONDITION and "tiling.prove" in str(fixed.value)
