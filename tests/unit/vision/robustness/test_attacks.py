"""APGD-CE, APGD-T, FAB-T and Square against torchattacks' own implementations (a second, independent
code base) on the tiny CNN: the same verdict per image on its 8 weakest and 8 strongest images, where both
clearly succeed or clearly fail; agreement on most images at an ε where the strong ones start to fall; and
Square's queries equal those a wrapper counted per image."""

import pytest
import torch
import torchattacks
from nnprobe_services.errors import Cancelled
from nnprobe_services.vision.robustness.apgd import ApgdSettings, apgd_ce, apgd_t
from nnprobe_services.vision.robustness.control import Control, Progress, seeded
from nnprobe_services.vision.robustness.fab import FabSettings, fab_t
from nnprobe_services.vision.robustness.square import SquareSettings, square, window_share

from tests.support.robustness_models import QueryCounter, frozen_tiny_cnn, weak_and_strong

CASES = [("linf", 4 / 255), ("l2", 0.3)]


@pytest.fixture(scope="module")
def tiny():
    net = frozen_tiny_cnn()
    images, labels = weak_and_strong(net)
    return net, images, labels


def _their_verdict(net, attack, images, labels) -> list[int]:
    torch.manual_seed(0)  # torchattacks draws from the global generator (it also reseeds it itself)
    adversarial = attack(images, labels)
    with torch.no_grad():
        return (net(adversarial).argmax(1) != labels).int().tolist()


def _ours(name, net, images, labels, epsilon, norm, seed=0):
    control = Control(seeded(seed))
    if name == "apgd-ce":
        return apgd_ce(net, net, images, labels, epsilon, norm, control, ApgdSettings(steps=10))
    if name == "apgd-t":
        return apgd_t(net, net, images, labels, epsilon, norm, control, ApgdSettings(steps=10, targets=4))
    if name == "fab-t":
        return fab_t(net, net, images, labels, epsilon, norm, control, FabSettings(steps=10, targets=4))
    return square(net, images, labels, epsilon, norm, control, SquareSettings(queries=200))


def _theirs(name, net, epsilon, norm):
    norm = {"linf": "Linf", "l2": "L2"}[norm]
    if name == "apgd-ce":
        return torchattacks.APGD(net, norm=norm, eps=epsilon, steps=10, loss="ce")
    if name == "apgd-t":
        return torchattacks.APGDT(net, norm=norm, eps=epsilon, steps=10, n_classes=5)
    if name == "fab-t":
        return torchattacks.FAB(net, norm=norm, eps=epsilon, steps=10, n_classes=5, multi_targeted=True)
    return torchattacks.Square(net, norm=norm, eps=epsilon, n_queries=200)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
@pytest.mark.parametrize(("norm", "epsilon"), CASES)
def test_same_verdict_as_torchattacks_per_image(tiny, name, norm, epsilon):
    net, images, labels = tiny
    ours = _ours(name, net, images, labels, epsilon, norm).fooled.int().tolist()
    theirs = _their_verdict(net, _theirs(name, net, epsilon, norm), images, labels)
    assert ours == theirs
    assert ours == [1] * 8 + [0] * 8  # the weak images fall, the strong ones stand


def test_apgd_ce_agrees_with_torchattacks_where_strong_images_start_to_fall(tiny):
    net, images, labels = tiny
    epsilon = 8 / 255
    ours = _ours("apgd-ce", net, images, labels, epsilon, "linf").fooled.int().tolist()
    theirs = _their_verdict(net, _theirs("apgd-ce", net, epsilon, "linf"), images, labels)
    assert sum(ours[8:]) >= 2  # some strong images fall at this ε
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) >= 14


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_counts_every_query_exactly_within_its_budget(tiny, norm):
    net, images, labels = tiny
    counter = QueryCounter(net, images)
    epsilon = 4 / 255 if norm == "linf" else 0.3
    result = square(counter, images, labels, epsilon, norm, Control(seeded(3)), SquareSettings(queries=50))
    assert result.queries.tolist() == counter.counts.tolist()
    assert int(result.queries.max()) == 50  # the strong images use the whole budget
    assert all(0 < q < 50 for q in result.queries[:8].tolist())  # the weak ones stop when fooled


def test_square_window_schedule_halves_p_at_the_papers_marks():
    settings = SquareSettings(queries=10000, p_init=0.8)
    assert [window_share(i, settings) for i in (0, 10, 11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)] == [
        0.8 / 2**k for k in (0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    ]


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_same_seed_same_images_and_stop_ends_the_attack(tiny, name):
    net, images, labels = tiny
    global_state = torch.random.get_rng_state()
    first = _ours(name, net, images, labels, 8 / 255, "linf", seed=5)
    second = _ours(name, net, images, labels, 8 / 255, "linf", seed=5)
    assert torch.equal(first.adversarial, second.adversarial)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # only the attack's own generator drew
    seen: list[Progress] = []
    control = Control(seeded(0), stop=lambda: len(seen) >= 3, on_progress=seen.append)
    with pytest.raises(Cancelled) as stopped:
        if name == "square":
            square(net, images, labels, 1 / 255, "linf", control, SquareSettings(queries=100))
        elif name == "fab-t":
            fab_t(net, net, images, labels, 1 / 255, "linf", control, FabSettings(steps=20, targets=2))
        else:
            attack = apgd_ce if name == "apgd-ce" else apgd_t
            attack(net, net, images, labels, 1 / 255, "linf", control, ApgdSettings(steps=20, targets=2))
    assert len(seen) == 3 and stopped.value.done == 3
    assert seen[-1].attack.startswith(name) and seen[-1].step == 3
