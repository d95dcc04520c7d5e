"""The 8-bit rule: every image an attack returns is an 8-bit image inside its budget, measured here on the
uint8 values a PNG round trip gives back, independently of the attack code."""

import io
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.robustness.apgd import ApgdSettings, apgd_ce, apgd_t
from nnprobe_services.vision.robustness.control import Control, seeded
from nnprobe_services.vision.robustness.fab import FabSettings, fab_t
from nnprobe_services.vision.robustness.grid import to_grid, within_budget
from nnprobe_services.vision.robustness.pgd import PgdSettings, pgd
from nnprobe_services.vision.robustness.square import SquareSettings, square
from PIL import Image

from tests.support.robustness_models import frozen_tiny_cnn


def png_round_trip(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) pixels on the grid → PNG bytes (Pillow) → uint8 (N, 3, H, W) as int64."""
    decoded = []
    for image in pixels:
        levels = image.permute(1, 2, 0).numpy() * 255
        assert np.abs(levels - np.rint(levels)).max() < 1e-3, "not on the 8-bit grid"
        buffer = io.BytesIO()
        Image.fromarray(np.rint(levels).astype(np.uint8)).save(buffer, format="PNG")
        decoded.append(
            np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).transpose(2, 0, 1)
        )
    return np.stack(decoded).astype(np.int64)


def inside(adversarial: np.ndarray, original: np.ndarray, epsilon: float, norm: str) -> bool:
    """The budget in whole levels: max |Δ| <= floor(255ε) (L-infinity), Σ Δ² <= (255ε)² (L2)."""
    steps = (adversarial - original).reshape(len(original), -1)
    if norm == "linf":
        return bool((np.abs(steps).max(1) <= math.floor(255 * epsilon + 1e-9)).all())
    return bool(((steps**2).sum(1) <= (255 * epsilon) ** 2 + 1e-9).all())


def test_rounding_alone_leaves_the_l2_ball_and_to_grid_projects_back():
    original = torch.full((1, 3, 4, 4), 100 / 255)
    adversarial = original + 0.6 / 255  # 48 steps of 0.6 levels: norm 4.16 levels ≤ ε = 4.2 levels
    epsilon = 4.2 / 255
    rounded = torch.round(adversarial * 255) / 255  # each step rounds up to 1 level: norm √48 = 6.9 levels
    assert not inside(png_round_trip(rounded), png_round_trip(original), epsilon, "l2")
    settled = to_grid(adversarial, original, epsilon, "l2")
    assert inside(png_round_trip(settled), png_round_trip(original), epsilon, "l2")
    assert int((png_round_trip(settled) != png_round_trip(original)).sum()) == 17  # ⌊4.2²⌋ = 17 levels²


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    norm=st.sampled_from(["linf", "l2"]),
    levels=st.floats(0.0, 40.0),
    spread=st.floats(0.0, 0.5),
)
def test_to_grid_lands_inside_the_ball_on_the_grid(seed, norm, levels, spread):
    generator = torch.Generator().manual_seed(seed)
    original = torch.round(torch.rand(2, 3, 5, 5, generator=generator) * 255) / 255
    adversarial = original + (torch.rand(2, 3, 5, 5, generator=generator) * 2 - 1) * spread
    epsilon = levels / 255 if norm == "linf" else levels / 255 * 3
    settled = to_grid(adversarial, original, epsilon, norm)
    assert inside(png_round_trip(settled), png_round_trip(original), epsilon, norm)
    assert bool(within_budget(settled, original, epsilon, norm).all())


def _attack(name, net, x, y, epsilon, norm, seed):
    control = Control(seeded(seed))
    if name == "apgd-ce":
        return apgd_ce(net, net, x, y, epsilon, norm, control, ApgdSettings(steps=4))
    if name == "apgd-t":
        return apgd_t(net, net, x, y, epsilon, norm, control, ApgdSettings(steps=3, targets=2))
    if name == "fab-t":
        return fab_t(net, net, x, y, epsilon, norm, control, FabSettings(steps=3, targets=2))
    if name == "pgd":
        return pgd(net, net, x, y, epsilon, norm, control, PgdSettings(steps=3))
    return square(net, x, y, epsilon, norm, control, SquareSettings(queries=20))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["apgd-ce", "apgd-t", "fab-t", "pgd", "square"]),
    norm=st.sampled_from(["linf", "l2"]),
    epsilon_levels=st.sampled_from([0.5, 1.0, 2.7, 8.0, 30.0]),
    seed=st.integers(0, 1000),
)
def test_every_attack_returns_8_bit_images_inside_the_ball(name, norm, epsilon_levels, seed):
    net = frozen_tiny_cnn()
    generator = torch.Generator().manual_seed(seed)
    x = torch.round(torch.rand(4, 3, 16, 16, generator=generator) * 255) / 255
    with torch.no_grad():
        y = net(x).argmax(1)
    epsilon = epsilon_levels / 255 if norm == "linf" else epsilon_levels * 4 / 255
    result = _attack(name, net, x, y, epsilon, norm, seed)
    decoded, original = png_round_trip(result.adversarial), png_round_trip(x)
    assert inside(decoded, original, epsilon, norm)
    with torch.no_grad():  # a success is that of the decoded 8-bit image
        verdict = net(torch.from_numpy(decoded).float() / 255).argmax(1) != y
    assert verdict.tolist() == result.fooled.tolist()
