"""The SDK against in-process VisionServices: GenerateAdversarial (the fifteen-pair PGD result after 8-bit
quantization, determinism, transfer to a second server, cancellation, every error path) and the CLI."""

import io
import threading
import time

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient
from nnprobe.vision import AdversarialResult, AttackProgress
from nnprobe_services.server.metrics import metrics_for
from PIL import Image

from tests.support import vision_reference

PHOTOS = [
    "n01726692_4802_snake.jpg",
    "n01674464_3490_lizard.jpg",
    "n01770393_12410_scorpion.jpg",
    "n02129165_2762_lion.jpg",
    "n02129604_20374_tiger.jpg",
]


@pytest.fixture(scope="module")
def photos(shared_dir):
    return [shared_dir / "data" / "seed-images" / name for name in PHOTOS]


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A resnet18 with seeded random weights under torchvision's file name: a second, different model."""
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(18)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18-f37072fd.pth")
    return folder


@pytest.fixture(scope="module")
def servers(module_server_factory, tmp_path_factory, resnet18_weights):
    first, address = module_server_factory(
        "vision", tmp_path_factory.mktemp("a"), weights_download_timeout=0.0, weights_dir=resnet18_weights
    )
    second, other = module_server_factory(
        "vision",
        tmp_path_factory.mktemp("b"),
        max_attack_steps=50,
        weights_dir=resnet18_weights,
        default_model="resnet18",
    )
    yield address, other
    first.shutdown(0).wait()
    second.shutdown(0).wait()


@pytest.fixture(scope="module")
def vision(servers):
    with VisionClient(servers[0], timeout=300) as client:
        yield client


def test_targeted_pgd_succeeds_on_all_fifteen_pairs_after_quantization(vision, photos):
    results = {}
    for target in (5, 10, 15):
        for r in vision.attack(
            photos, target=target, method="pgd", eps="4/255", step_size="1.5/255", steps=8
        ):
            results[(r.name, target)] = r
    assert len(results) == 15
    for (name, target), r in results.items():
        assert r.success and r.final_top[0].index == target, (name, target)
        adversarial = np.asarray(Image.open(io.BytesIO(r.adversarial_png)))
        original = np.asarray(Image.open(io.BytesIO(r.original_png)))
        steps = adversarial.astype(int) - original.astype(int)
        assert np.abs(steps).max() <= 4 and r.linf == np.abs(steps).max() / 255
        assert np.array_equal(r.perturbation * 255, steps.astype(np.float32))
        assert r.l0 == np.count_nonzero(steps) and r.l2 == pytest.approx(np.sqrt((steps**2).sum()) / 255)
        assert r.original_top[0].index == {PHOTOS[0]: 58, PHOTOS[1]: 42, PHOTOS[2]: 71, PHOTOS[3]: 291}.get(
            name, 292
        )
        assert 1 <= r.iterations <= 8 and r.goal_class == target
    # The saved PNG itself is adversarial: classify it as a client would.
    sample = results[(PHOTOS[4], 15)]
    assert vision.classify(sample.adversarial_png, skip_resize=True, top_k=1)[0].index == 15


def test_same_request_same_bytes_and_progress_events(vision, photos):
    options = {"target": "robin", "method": "pgd", "eps": "8/255", "steps": 2, "seed": 3, "early_stop": False}
    first = list(vision.generate_adversarial(photos[4], **options))
    second = list(vision.generate_adversarial(photos[4], **options))
    progress = [e for e in first if isinstance(e, AttackProgress)]
    assert [(p.image, p.iteration) for p in progress] == [(0, 1), (0, 2)]
    assert progress[0].loss > 0 and 0 <= progress[1].goal_probability <= 1
    (a,) = [e for e in first if isinstance(e, AdversarialResult)]
    (b,) = [e for e in second if isinstance(e, AdversarialResult)]
    assert a.goal_class == 15 and a.iterations == 2
    assert a.adversarial_png == b.adversarial_png and np.array_equal(a.perturbation, b.perturbation)
    a.raw.seconds = b.raw.seconds = 0
    assert a.raw.SerializeToString(deterministic=True) == b.raw.SerializeToString(deterministic=True)
    other = list(vision.generate_adversarial(photos[4], **{**options, "seed": 4}))
    assert other[-1].adversarial_png != a.adversarial_png  # the random start depends on the seed


def test_untargeted_methods_and_transfer_to_a_second_server(vision, servers, photos, resnet18_weights):
    import torchvision

    progress = []
    (fgsm,) = vision.attack(
        photos[3],
        untargeted=True,
        method="fgsm",
        eps="2/255",
        transfer_models=["resnet18", "alexnet"],
        transfer_addresses=[servers[1]],
        on_progress=progress.append,
    )
    assert fgsm.goal_class == 291 and fgsm.iterations == 1 and fgsm.linf == 2 / 255
    own = vision_reference.probabilities(vision_reference.lite0(), fgsm.adversarial_png)
    assert fgsm.success == (int(own.argmax()) != 291) and len(progress) == 1
    # FGSM's one iteration of the server's default steps (total unknown to the client: 0).
    (step,) = progress
    assert (step.done, step.total, step.unit) == (1, 0, "iterations")
    assert (step.detail.image, step.detail.iteration) == (0, 1) and step.message.startswith("image 0: ")
    # The other model, run here by torchvision on the returned PNG with the same seeded weights.
    other = torchvision.models.resnet18()
    other.load_state_dict(torch.load(resnet18_weights / "resnet18-f37072fd.pth", weights_only=True))
    expected = int(vision_reference.probabilities(other.eval(), fgsm.adversarial_png).argmax())
    before = int(vision_reference.probabilities(other.eval(), fgsm.original_png).argmax())
    local, missing, remote = fgsm.transfers
    assert (local.model, local.address, local.top1.index) == ("resnet18", "", expected)
    assert local.original_top1.index == before  # its own view of the original, not the attacked model's
    assert local.fooled == (local.top1.label != local.original_top1.label)
    assert "alexnet-owt-7be5be79.pth" in missing.error and missing.top1 is None and not missing.fooled
    assert (remote.model, remote.address, remote.error) == ("resnet18", servers[1], "")
    assert (remote.top1.index, remote.original_top1.index) == (expected, before)
    assert remote.fooled == local.fooled and remote.verdict == local.verdict
    for method, extra in [
        ("bim", {}),
        ("mi_fgsm", {}),
        ("adam", {"learning_rate": 0.01}),
        ("cw_l2", {"cw_c": 5.0}),
    ]:
        (r,) = vision.attack(photos[3], untargeted=True, method=method, steps=2, early_stop=False, **extra)
        assert r.iterations == 2 and r.goal_class == 291 and r.success == (r.final_top[0].index != 291)
        if method != "cw_l2":
            assert r.linf <= 8 / 255 + 1e-9


def _value(name):
    return metrics_for("vision").registry.get_sample_value(name) or 0.0


def test_cancellation_stops_the_attack_loop(vision, photos):
    before = _value("nnprobe_attack_stopped_total")
    events = vision.generate_adversarial(photos[4], target=15, steps=200, eps="1/255", early_stop=False)
    first = next(events)
    assert isinstance(first, AttackProgress) and first.iteration == 1
    events.close()  # cancels the call
    end = time.monotonic() + 60
    while _value("nnprobe_attack_stopped_total") == before:
        assert time.monotonic() < end, "the server did not record the stop"
        time.sleep(0.02)
    assert 1 <= _value("nnprobe_attack_stopped_at_iteration") <= 2  # stopped within one iteration
    with pytest.raises(NnprobeError) as caught:  # a deadline stops it too
        list(vision.generate_adversarial(photos[4], target=15, steps=200, early_stop=False, timeout=3))
    assert caught.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def test_remote_transfer_carries_the_token(server_factory, tmp_path, photos):
    secured, secured_address = server_factory("vision", tmp_path / "s", auth_token="s3cret")
    attacker, address = server_factory("vision", tmp_path / "a", auth_token="s3cret")
    try:
        with VisionClient(address, token="s3cret", timeout=300) as client:
            (r,) = client.attack(
                photos[0], untargeted=True, method="fgsm", eps="1/255", transfer_addresses=[secured_address]
            )
        assert r.transfers[0].error == "" and r.transfers[0].top1 is not None
    finally:
        secured.shutdown(0).wait()
        attacker.shutdown(0).wait()


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"target": 5, "eps": 0}, "epsilon", "must be in (0, 1] pixel units, got 0.0"),
        ({"target": 5, "eps": 1.5}, "epsilon", "must be in (0, 1] pixel units, got 1.5"),
        ({"target": 5, "steps": -1}, "steps", "must be in 1..1000, got -1"),
        ({"target": 5, "steps": 1001}, "steps", "must be in 1..1000, got 1001"),
        ({"target": 1000}, "target.class_index", "must be in 0..999, got 1000"),
        ({"target": -3}, "target.class_index", "must be in 0..999, got -3"),
        ({"target": "unicorn"}, "target.label", "no ImageNet class is called 'unicorn'"),
        ({"target": 5, "untargeted": True}, "target", "must be absent with an untargeted goal"),
        ({"untargeted": True, "method": "cw_l2", "eps": "4/255"}, "epsilon", "cw_l2 has no epsilon budget"),
        ({"target": 5, "method": "fgsm", "norm": "l2"}, "norm", "fgsm supports the L-infinity norm only"),
        ({"target": 5, "method": "cw_l2", "norm": "linf"}, "norm", "cw_l2 is an L2 attack"),
        ({"target": 5, "method": "fgsm", "steps": 3}, "steps", "fgsm takes exactly one step"),
        ({"target": 5, "method": "bim", "random_start": True}, "random_start", "only pgd has a random start"),
        ({"target": 5, "step_size": -0.1}, "step_size", "must be in (0, 1] pixel units"),
        ({"target": 5, "method": "adam", "learning_rate": 0.0}, "learning_rate", "must be a positive number"),
        ({"target": 5, "top_k": 1001}, "top_k", "must be in 1..1000"),
        (
            {"target": 5, "transfer_addresses": ["h#V\u00c1{\u00dfF"]},
            "transfer_addresses[0]",
            "not a host:port",
        ),
        ({"target": 5, "transfer_addresses": [""]}, "transfer_addresses[0]", "is empty"),
        (
            {"target": 5, "transfer_addresses": ["127.0.0.1:1", "[::1]:2", "127.0.0.1:1"]},
            "transfer_addresses[2]",
            "repeats transfer_addresses[0]",
        ),
        ({"target": 5, "transfer_addresses": ["::::"]}, "transfer_addresses[0]", "not a host:port"),
        (
            {"target": 5, "transfer_models": ["efficientnet_lite0", "resnet18", "efficientnet_lite0"]},
            "transfer_models[2]",
            "repeats transfer_models[0]",
        ),
        ({"target": 5, "transfer_addresses": ["127.0.0.1:1"] * 9}, "transfer_addresses", "at most 8"),
    ],
)
def test_bad_requests(vision, photos, options, field, message):
    with pytest.raises(NnprobeError) as caught:
        list(vision.generate_adversarial(photos[0], **options))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0].field == field
    assert message in caught.value.message


def test_bad_images_models_and_limits(vision, servers, photos):
    cases = [
        (lambda: vision.attack([photos[0], b""], target=5), "INVALID_ARGUMENT", "images[1].encoded"),
        (lambda: vision.attack([], target=5), "INVALID_ARGUMENT", "images"),
        (lambda: vision.attack(photos[0], target=5, model="lenet"), "NOT_FOUND", "model"),
        (
            lambda: vision.attack(photos[0], target=5, transfer_models=["x"]),
            "NOT_FOUND",
            "transfer_models[0]",
        ),
        (lambda: vision.attack(photos[0], target=5, model="vgg16"), "FAILED_PRECONDITION", "model"),
    ]
    for call, code, field in cases:
        with pytest.raises(NnprobeError) as caught:
            call()
        assert (caught.value.code.name, caught.value.field_violations[0].field) == (code, field)
    with VisionClient(servers[1], timeout=60) as limited, pytest.raises(NnprobeError) as caught:
        limited.attack(photos[0], target=5, steps=51)
    assert "must be in 1..50, got 51" in caught.value.message


def test_cli_attack_saves_pictures(vision, photos, tmp_path, capsys):
    from nnprobe.cli import main

    argv = ["attack", str(photos[4]), "--target", "15", "--method", "pgd", "--eps", "4/255"]
    argv += [
        "--step-size",
        "1.5/255",
        "--steps",
        "5",
        "--save-dir",
        str(tmp_path),
        "--address",
        vision.address,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tiger = vision_reference.photo_probabilities(photos[4])[292]
    assert f"tiger ({tiger:.3f})" in out and "robin" in out and "4/255" in out
    picture = Image.open(tmp_path / "n02129604_20374_tiger-adversarial.png")
    assert picture.size == (3 * 224 + 8, 224)
    assert main([*argv[:-2], "--json", "--address", vision.address]) == 0
    assert '"success": true' in capsys.readouterr().out


def test_concurrent_attacks_do_not_interfere(vision, photos):
    outcomes = {}

    def run(target):
        outcomes[target] = vision.attack(photos[2], target=target, method="fgsm", eps="4/255")[
            0
        ].adversarial_png

    threads = [threading.Thread(target=run, args=(t,)) for t in (5, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes[5] == vision.attack(photos[2], target=5, method="fgsm", eps="4/255")[0].adversarial_png


def _steps(result):
    adversarial = np.asarray(Image.open(io.BytesIO(result.adversarial_png))).astype(int)
    original = np.asarray(Image.open(io.BytesIO(result.original_png))).astype(int)
    return adversarial - original


def _top1(result):
    return int(vision_reference.probabilities(vision_reference.lite0(), result.adversarial_png).argmax())


@pytest.mark.parametrize("early_stop", [True, False])
def test_budgets_hold_on_the_returned_tiger(vision, photos, early_stop):
    (fgsm,) = vision.attack(photos[4], untargeted=True, method="fgsm", eps=0.03, early_stop=early_stop)
    assert np.abs(_steps(fgsm)).max() <= 7  # floor(0.03 * 255) = 7 levels
    assert fgsm.success == (_top1(fgsm) != 292)
    (pgd,) = vision.attack(photos[4], target=15, method="pgd", eps="4.5/255", steps=10, early_stop=early_stop)
    assert np.abs(_steps(pgd)).max() <= 4 and pgd.success == (_top1(pgd) == 15)
    for refine_steps in (0, 2):
        (l2,) = vision.attack(
            photos[4],
            untargeted=True,
            method="pgd",
            norm="l2",
            eps=0.5,
            step_size=0.2,
            steps=3,
            refine_steps=refine_steps,
            early_stop=early_stop,
        )
        assert np.sqrt((_steps(l2) ** 2).sum()) / 255 <= 0.5 and l2.l2 <= 0.5
        assert l2.success == (_top1(l2) != 292)


def test_a_goal_already_met_takes_no_step(vision, photos):
    (r,) = vision.attack(photos[4], target=292, method="pgd", eps="4/255", steps=5)
    assert (r.success, r.iterations, r.linf, r.l0) == (True, 0, 0.0, 0)
    assert np.array_equal(_steps(r), np.zeros_like(_steps(r))) and _top1(r) == 292


def test_a_long_thin_image_is_classified_and_attacked(vision):
    row = np.zeros((1, 40_000, 3), dtype=np.uint8)
    row[0, :, 1] = 200
    buffer = io.BytesIO()
    Image.fromarray(row).save(buffer, format="PNG")
    (result,) = vision.classify(buffer.getvalue(), top_k=1)
    assert result.top[0].index >= 0
    (attacked,) = vision.attack(buffer.getvalue(), untargeted=True, method="fgsm", eps="1/255")
    original = np.asarray(Image.open(io.BytesIO(attacked.original_png)))
    assert original.shape == (224, 224, 3) and np.all(original == [0, 200, 0])
