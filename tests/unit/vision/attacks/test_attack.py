"""Attack core: agreement with torchattacks (PGD, FGSM), projections, quantization and lattice refinement."""

import pytest
import torch
from nnprobe_services.vision.attacks import methods as attacks
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import store


@pytest.fixture(scope="module")
def lite0():
    return store.ModelStore(torch.device("cpu")).get("efficientnet_lite0")


@pytest.fixture(scope="module")
def two_photos(shared_dir, lite0):
    files = sorted((shared_dir / "data" / "seed-images").glob("*.jpg"))[3:5]  # lion, tiger
    limits = preprocess.ImageLimits(1 << 26, 1 << 26)
    prep = lite0.record.preprocessing
    return torch.stack(
        [preprocess.prepare(f.read_bytes(), prep, field="image", limits=limits) for f in files]
    )


def _ours(lite0, images, labels, targeted, spec):
    outcomes = {}
    for event in attacks.attack(lite0.module, images, labels, targeted, spec):
        if isinstance(event, tuple):
            outcomes[event[0]] = event[1]
    return [outcomes[i] for i in range(len(images))]


def _reference(attack, lite0, images, labels, targeted):
    # torchattacks gets the same [0, 1]-input model (normalisation inside, as ours). Its
    # ``set_normalization_used`` would instead expect normalised inputs and return normalised outputs.
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    return attack(images, labels)


def test_pgd_agrees_with_torchattacks(lite0, two_photos):
    import torchattacks

    labels = torch.tensor([5, 10])
    spec = attacks.AttackSpec("pgd", "linf", 4 / 255, 1.5 / 255, steps=2, seed=7, early_stop=False)
    ours = _ours(lite0, two_photos, labels, True, spec)
    torch.manual_seed(7)  # torchattacks draws its random start from the global generator
    reference = _reference(
        torchattacks.PGD(lite0.module, eps=4 / 255, alpha=1.5 / 255, steps=2, random_start=True),
        lite0,
        two_photos,
        labels,
        True,
    )
    ours_float = torch.stack([o.float_adversarial for o in ours])
    assert float((ours_float - reference).abs().max()) <= 1e-6
    assert float((ours_float - two_photos).abs().max()) <= 4 / 255 + 1e-7
    with torch.no_grad():
        reference_success = lite0.module(attacks.quantize(reference)).argmax(1) == labels
    assert [o.success for o in ours] == reference_success.tolist()


def test_fgsm_agrees_with_torchattacks(lite0, two_photos):
    import torchattacks

    with torch.no_grad():
        original = lite0.module(two_photos).argmax(1)
    assert original.tolist() == [291, 292]
    spec = attacks.AttackSpec("fgsm", "linf", 2 / 255, steps=1, early_stop=False)
    ours = _ours(lite0, two_photos, original, False, spec)
    reference = _reference(torchattacks.FGSM(lite0.module, eps=2 / 255), lite0, two_photos, original, False)
    ours_float = torch.stack([o.float_adversarial for o in ours])
    assert float((ours_float - reference).abs().max()) <= 1e-6
    with torch.no_grad():
        reference_success = lite0.module(attacks.quantize(reference)).argmax(1) != original
    assert [o.success for o in ours] == reference_success.tolist()
    assert all(o.iterations == 1 for o in ours)


def test_projection_and_quantization():
    delta = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    l2 = attacks.project(delta, attacks.AttackSpec(norm="l2", epsilon=1.0))
    assert l2.flatten().tolist() == pytest.approx([0.6, 0.8])
    linf = attacks.project(delta / 100, attacks.AttackSpec(norm="linf", epsilon=0.035))
    assert linf.flatten().tolist() == pytest.approx([0.03, 0.035])
    q = attacks.quantize(torch.tensor([-0.1, 0.5 / 255, 1.6 / 255, 1.2]))
    assert (q * 255).tolist() == pytest.approx([0, 0, 2, 255])


def test_refinement_stays_on_the_lattice_inside_the_ball():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    original = attacks.quantize(torch.rand(1, 3, 2, 2))
    labels = torch.tensor([2])
    spec = attacks.AttackSpec("pgd", "linf", 3 / 255, refine_steps=50)
    adversarial, success, used = attacks.refine(model, original, original + 0.4 / 255, labels, True, spec)
    steps = (adversarial - original) * 255
    assert torch.allclose(steps, steps.round(), atol=1e-4) and float(steps.abs().max()) <= 3 + 1e-4
    assert success == bool(model(adversarial).argmax(1) == 2) and 0 <= used <= 50
