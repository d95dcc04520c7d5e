"""The evaluation: the standard ensemble's robust accuracy equals torchattacks AutoAttack's, every returned
image is an 8-bit image inside its budget that fools the model after a PNG round trip, a resumed run gives
the same per-image results as an uninterrupted one, a model robust by construction keeps its accuracy, and
AutoAttack's warnings fire on a gradient-masking, a randomised and a probability-returning model."""

import io
import json
import math

import numpy as np
import onnxruntime
import pytest
import torch
import torchattacks
from nnprobe_services.errors import Cancelled, InvalidArgument
from nnprobe_services.vision.robustness.apgd import ApgdSettings
from nnprobe_services.vision.robustness.ensemble import AttackSettings
from nnprobe_services.vision.robustness.evaluate import evaluate
from nnprobe_services.vision.robustness.fab import FabSettings
from nnprobe_services.vision.robustness.pgd import PgdSettings
from nnprobe_services.vision.robustness.square import SquareSettings
from PIL import Image

from tests.support.robustness_models import (
    CoarseInput,
    MaskedGradients,
    Probabilities,
    Randomised,
    frozen_tiny_cnn,
    weak_and_strong,
)
from tests.support.tiny_cnn import onnx_bytes

#: torchattacks' AutoAttack defaults (10 APGD and FAB steps), with Square's budget cut to 200 queries.
SMALL = AttackSettings(
    apgd=ApgdSettings(steps=10),
    fab=FabSettings(steps=10),
    square=SquareSettings(queries=200),
    pgd=PgdSettings(),
)


@pytest.fixture(scope="module")
def tiny():
    net = frozen_tiny_cnn()
    images, labels = weak_and_strong(net)
    return net, images, labels


def _decoded(pixels: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) → PNG (Pillow) → int64 (3, H, W)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="PNG")
    return (
        np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        .transpose(2, 0, 1)
        .astype(np.int64)
    )


@pytest.mark.parametrize(("norm", "epsilon"), [("linf", 4 / 255), ("l2", 0.3)])
def test_standard_ensemble_matches_torchattacks_autoattack(tiny, norm, epsilon):
    net, images, labels = tiny
    result = evaluate(net, images, labels, [epsilon], "standard", norm, seed=0, settings=SMALL)
    reference = torchattacks.AutoAttack(
        net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=epsilon, n_classes=5, seed=0
    )
    reference._autoattack.attacks[3].n_queries = 200  # its Square, cut to our test budget
    adversarial = reference(images, labels)
    with torch.no_grad():
        their_robust = int((net(adversarial).argmax(1) == labels).sum())
    assert result.per_epsilon[0].robust == their_robust == 8
    assert result.clean_correct == 16 and result.per_epsilon[0].accuracy == 0.5
    assert result.per_epsilon[0].low < 0.5 < result.per_epsilon[0].high
    original = (images * 255).round().to(torch.int64).numpy()
    for i, record in enumerate(result.records):
        if record.status[0] != "broken":
            continue
        decoded = _decoded(record.adversarial[0])
        steps = (decoded - original[i]).ravel()
        budget = math.floor(255 * epsilon + 1e-9) if norm == "linf" else (255 * epsilon) ** 2
        assert (np.abs(steps).max() if norm == "linf" else (steps**2).sum()) <= budget
        with torch.no_grad():
            assert int(net(torch.from_numpy(decoded)[None].float() / 255).argmax(1)) != int(labels[i])


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_results(tiny):
    net, images, labels = tiny
    labels = labels.clone()
    labels[3] = (labels[3] + 1) % 5  # one image misclassified from the start
    arguments = dict(settings=SMALL, batch_size=5)
    epsilons = [2 / 255, 8 / 255]
    whole = evaluate(net, images, labels, epsilons, "standard", "linf", 7, **arguments)
    saved: list[str] = []
    with pytest.raises(Cancelled):
        evaluate(
            net, images, labels, epsilons, "standard", "linf", 7, stop=lambda: len(saved) >= 3,
            on_checkpoint=lambda state: saved.append(json.dumps(state.to_dict())), **arguments,
        )  # fmt: skip
    assert len(saved) == 3  # of 8 units (2 ε × 4 batches)
    resumed = evaluate(
        net,
        images,
        labels,
        epsilons,
        "standard",
        "linf",
        7,
        checkpoint_state=json.loads(saved[-1]),
        **arguments,
    )
    assert [r.status for r in resumed.records] == [r.status for r in whole.records]
    assert [r.broken_by for r in resumed.records] == [r.broken_by for r in whole.records]
    assert [r.queries for r in resumed.records] == [r.queries for r in whole.records]
    for a, b in zip(resumed.records, whole.records, strict=True):
        assert all(
            (x is None and y is None) or np.array_equal(x, y)
            for x, y in zip(a.adversarial, b.adversarial, strict=True)
        )
    assert whole.records[3].status == ["misclassified"] * 2
    assert whole.per_epsilon[0].robust > whole.per_epsilon[1].robust  # the strong images fall at 8/255
    with pytest.raises(InvalidArgument) as wrong:
        evaluate(net, images, labels, epsilons, "standard", "linf", 8, checkpoint_state=json.loads(saved[-1]))
    assert wrong.value.field == "checkpoint_state"


@pytest.mark.parametrize(("norm", "epsilon"), [("linf", 8 / 255), ("l2", 0.15)])
def test_a_model_that_rounds_its_input_coarsely_keeps_its_accuracy(tiny, norm, epsilon):
    net = CoarseInput(tiny[0], levels=4)  # rounds to thirds: a change below 1/6 per pixel changes nothing
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 4, (8, 3, 16, 16), generator=generator).float() / 3
    with torch.no_grad():
        labels = net(images).argmax(1)
    result = evaluate(net, images, labels, [epsilon], "standard", norm, settings=SMALL)
    assert result.per_epsilon[0].robust == result.clean_correct == 8
    assert result.warnings == []


def test_masked_gradients_trigger_the_gradient_masking_warning(tiny):
    net, images, labels = tiny
    result = evaluate(MaskedGradients(net), images, labels, [4 / 255], "standard", "linf", settings=SMALL)
    warnings = [w for w in result.warnings if w.kind == "gradient_masking"]
    square_only = [i for i, r in enumerate(result.records) if r.broken_by[0] == "square"]
    assert len(warnings) == 1 and square_only and list(warnings[0].images) == square_only
    plain = evaluate(net, images, labels, [4 / 255], "standard", "linf", settings=SMALL)
    assert all(w.kind != "gradient_masking" for w in plain.warnings)


def test_randomised_and_probability_models_trigger_their_warnings(tiny):
    net, images, labels = tiny
    noisy = evaluate(Randomised(net), images, labels, [1 / 255], "pgd", "linf", settings=SMALL)
    assert "randomised" in [w.kind for w in noisy.warnings]
    softmax = evaluate(Probabilities(net), images, labels, [1 / 255], "pgd", "linf", settings=SMALL)
    assert [w.kind for w in softmax.warnings] == ["probabilities"]
    plain = evaluate(net, images, labels, [1 / 255], "pgd", "linf", settings=SMALL)
    assert plain.warnings == []


def test_black_box_square_only_and_bisection_of_the_smallest_epsilon(tiny):
    net, images, labels = tiny
    seen = []
    result = evaluate(
        None, images, labels, [2 / 255, 4 / 255], ["square"], "linf", judge=net, settings=SMALL,
        bisection_steps=3, on_progress=seen.append,
    )  # fmt: skip
    assert result.per_epsilon[0].robust == 8 and seen and seen[-1].attack.attack == "square"
    assert all(r.queries[0] > 0 for r in result.records)
    weak = [r.smallest_epsilon for r in result.records[:8]]
    assert all(e is not None and e * 255 == pytest.approx(1.0) for e in weak)  # one level breaks them
    assert all(r.smallest_epsilon is None for r in result.records[8:])
    with pytest.raises(InvalidArgument) as refused:
        evaluate(None, images, labels, [2 / 255], "standard", judge=net)
    assert refused.value.field == "attacks"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(eps_list=[4 / 255, 2 / 255]), "eps_list"),
        (dict(eps_list=[0.0]), "eps_list"),
        (dict(norm="l1"), "norm"),
        (dict(attacks=["apgd-x"]), "attacks"),
        (dict(images=torch.full((2, 3, 16, 16), 1.5)), "images"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels"),
    ],
)
def test_bad_inputs_name_their_field(tiny, change, field):
    net, images, labels = tiny
    arguments = dict(images=images[:2], labels=labels[:2], eps_list=[2 / 255], attacks="pgd", norm="linf")
    arguments.update(change)
    with pytest.raises(InvalidArgument) as bad:
        evaluate(net, **arguments)
    assert bad.value.field == field


def test_l2_bisection_brackets_the_smallest_breaking_epsilon(tiny):
    net, images, labels = tiny
    result = evaluate(net, images[8:12], labels[8:12], [0.1, 1.0], "pgd", "l2", bisection_steps=4)
    for record in result.records:
        assert record.status == ["robust", "broken"]
        steps = (record.smallest_epsilon - 0.1) / (0.9 / 16)  # four halvings of (0.1, 1.0]
        assert 0 < steps <= 16 and steps == pytest.approx(round(steps))


def test_apgd_t_is_refused_for_fewer_than_four_classes(tiny):
    net, images, labels = tiny

    def three_classes(x):
        return net(x)[:, :3]

    with pytest.raises(InvalidArgument, match="4 classes") as refused:
        evaluate(three_classes, images[:2], labels[:2] % 3, [2 / 255], "standard")
    assert refused.value.field == "attacks"
    result = evaluate(
        three_classes, images[:2], labels[:2] % 3, [2 / 255], ["apgd-ce", "fab-t"], settings=SMALL
    )
    assert result.total == 2


def test_an_onnx_runtime_black_box_is_evaluated_by_square_alone(tiny):
    net, images, labels = tiny
    session = onnxruntime.InferenceSession(onnx_bytes(net), providers=["CPUExecutionProvider"])
    calls = []

    def served(pixels: torch.Tensor) -> torch.Tensor:  # ONNX Runtime: no gradients, numpy in and out
        calls.append(len(pixels))
        return torch.from_numpy(session.run(None, {"x": pixels.numpy().astype(np.float32)})[0])

    result = evaluate(None, images, labels, [4 / 255], ["square"], judge=served, settings=SMALL)
    assert result.per_epsilon[0].robust == 8 and [r.status[0] for r in result.records[:8]] == ["broken"] * 8
    square_queries = sum(r.queries[0] for r in result.records)
    clean_checks = len(images) + min(len(images), 64)  # the clean predictions and the repeat call
    confirmations = 8  # each broken image re-classified once by the ensemble
    assert sum(calls) == square_queries + clean_checks + confirmations
