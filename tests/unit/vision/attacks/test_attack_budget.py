"""Every attack returns an 8-bit image inside its budget, and its success is that image's: the budget and
the goal are measured here on the returned uint8 values, independently of the attack code. Success is that of
the judge (the model as served), also when another module gives the gradients."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.attacks import methods as attacks


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 5)
    ).eval()


def _run(model, images, labels, targeted, spec, judge=None):
    outcomes = {}
    for event in attacks.attack(model, images, labels, targeted, spec, judge=judge):
        if isinstance(event, tuple):
            outcomes[event[0]] = event[1]
    return [outcomes[i] for i in range(len(images))]


def _uint8(pixels: torch.Tensor) -> np.ndarray:
    levels = pixels.detach().numpy() * 255
    assert np.abs(levels - np.rint(levels)).max() < 1e-3  # on the 8-bit lattice
    return np.rint(levels).astype(np.int64)


@settings(max_examples=120, deadline=None)
@given(
    method=st.sampled_from(["fgsm", "bim", "pgd", "mi_fgsm", "adam"]),
    norm=st.sampled_from(["linf", "l2"]),
    levels=st.sampled_from([0.5, 1.0, 2.0, 3.7, 4.5, 7.65, 20.0]),
    l2_epsilon=st.sampled_from([0.02, 0.05, 0.1, 0.37, 0.5]),
    early_stop=st.booleans(),
    refine_steps=st.integers(0, 3),
    targeted=st.booleans(),
    seed=st.integers(0, 5),
    separate_judge=st.booleans(),
)
def test_returned_image_respects_its_budget_and_its_success(
    method, norm, levels, l2_epsilon, early_stop, refine_steps, targeted, seed, separate_judge
):
    if method == "fgsm":
        norm = "linf"
    epsilon = levels / 255 if norm == "linf" else l2_epsilon
    spec = attacks.AttackSpec(
        method,
        norm,
        epsilon,
        step_size=epsilon / 2 if norm == "l2" else 1 / 255,
        steps=1 if method == "fgsm" else 3,
        seed=seed,
        random_start=method == "pgd",
        early_stop=early_stop,
        refine_steps=refine_steps,
        learning_rate=0.05,
    )
    model = _model(seed)
    # The judge: the same network, or (as for a model served by ONNX Runtime with a PyTorch twin for the
    # gradients) another one whose answers sometimes differ.
    served = _model(seed + 100) if separate_judge else model
    calls = []

    def judge(pixels):
        calls.append(len(pixels))
        with torch.no_grad():
            return served(pixels)

    generator = torch.Generator().manual_seed(seed)
    images = torch.round(torch.rand(3, 3, 6, 6, generator=generator) * 255) / 255
    with torch.no_grad():
        original_top = served(images).argmax(1)
    labels = (original_top + 1) % 5 if targeted else original_top
    outcomes = _run(model, images, labels, targeted, spec, judge)
    assert calls  # every success below was judged by it
    for image, outcome, label in zip(images, outcomes, labels, strict=True):
        steps = _uint8(outcome.adversarial) - _uint8(image)
        if norm == "linf":
            assert np.abs(steps).max() <= math.floor(levels + 1e-9)
        else:
            assert math.sqrt(float((steps**2).sum())) / 255 <= epsilon + 1e-12
        with torch.no_grad():
            logits = served(torch.from_numpy((_uint8(image) + steps) / 255).float()[None])
        top = int(logits.argmax(1))
        assert outcome.success == (top == int(label) if targeted else top != int(label))
        assert outcome.logits is not None
        torch.testing.assert_close(outcome.logits, logits[0], atol=1e-5, rtol=1e-5)


def test_goal_met_before_the_first_step_returns_the_unchanged_image():
    model = _model(0)
    images = torch.round(torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 255) / 255
    with torch.no_grad():
        top = model(images).argmax(1)
    for method in ("fgsm", "pgd", "cw_l2"):
        spec = attacks.AttackSpec(
            method, "l2" if method == "cw_l2" else "linf", 4 / 255, steps=1 if method == "fgsm" else 3
        )
        for outcome, image in zip(_run(model, images, top, True, spec), images, strict=True):
            assert (outcome.success, outcome.iterations) == (True, 0)
            assert torch.equal(outcome.adversarial, image)
    # An untargeted goal "not class c" is met at once by an image whose top-1 is not c.
    other = (top + 1) % 5
    for outcome, image in zip(
        _run(model, images, other, False, attacks.AttackSpec("bim")), images, strict=True
    ):
        assert (outcome.success, outcome.iterations) == (True, 0) and torch.equal(outcome.adversarial, image)


def test_l2_lattice_projection_closed_form():
    # One channel 0.3 away from a black pixel, ε = 2/255: rounding 76.5 levels is far outside; the largest
    # scale whose rounding fits leaves exactly 2 levels.
    original = torch.zeros(1, 1, 1, 2)
    adversarial = torch.tensor([0.3, 0.0]).view(1, 1, 1, 2)
    spec = attacks.AttackSpec("pgd", "l2", 2 / 255)
    assert (attacks.to_lattice(adversarial, original, spec) * 255).flatten().tolist() == [2.0, 0.0]
    # Two channels of 1.6 levels each (L2 2.26 levels) with ε = 2 levels: (2, 2) is 2.83 and out; the
    # largest fitting scale gives (1, 1), whose norm 1.41 is inside.
    two = torch.tensor([1.6, 1.6]).view(1, 1, 1, 2) / 255
    assert (attacks.to_lattice(two, original, spec) * 255).flatten().tolist() == [1.0, 1.0]
    # L-infinity: 0.03 is 7.65 levels, the budget floor(7.65) = 7.
    linf = attacks.AttackSpec("fgsm", "linf", 0.03)
    far = torch.full((1, 1, 1, 2), 0.03)
    assert (attacks.to_lattice(far, original, linf) * 255).flatten().tolist() == [7.0, 7.0]
