"""Transfer verdicts follow the transfer model's own view: its preprocessing, its labels. The tiny CNN is
attacked and checked against itself, against a twin that numbers its classes in another order (logits and
labels permuted alike: it must give exactly the same verdicts), against the same network at another input
size (24 x 24, which must answer), and against a model lacking the target's label (not applicable); locally
and on second servers whose default model is the twin or the 24 x 24 one. Top-1 labels are checked against
onnxruntime run here on the uploaded files, and against the transfer servers' own Classify. Last, the tiny
CNN and the ImageNet model judge each other's pictures in their own labels."""

from __future__ import annotations

import numpy as np
import pytest
from nnprobe import VisionClient

from tests.support import tiny_cnn, transfer_models

#: A permutation without fixed points: every class of the twin has another index than in the original.
ORDER = (3, 0, 4, 1, 2)
WIDE = 24
FOX_LABELS = ("ant", "bee", "cat", "dog", "fox")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    net = tiny_cnn.network(0)
    return {
        "tiny": tiny_cnn.write(root / "tiny.onnx", tiny_cnn.onnx_bytes(net)),
        "twin": tiny_cnn.write(
            root / "twin.onnx",
            transfer_models.onnx_bytes(transfer_models.Permuted(net, ORDER), tiny_cnn.SIDE),
        ),
        "wide": tiny_cnn.write(root / "wide.onnx", transfer_models.onnx_bytes(net, WIDE)),
    }


#: name -> (file, side, labels)
MODELS = {
    "tiny": ("tiny", tiny_cnn.SIDE, tiny_cnn.LABELS),
    "twin": ("twin", tiny_cnn.SIDE, transfer_models.permuted_labels(ORDER)),
    "wide": ("wide", WIDE, tiny_cnn.LABELS),
    "fox": ("tiny", tiny_cnn.SIDE, FOX_LABELS),
}


def _server(factory, tmp_path_factory, files, default, names):
    _, address = factory(
        "vision",
        weights_download_timeout=0,
        model_repository=tmp_path_factory.mktemp("repository"),
        max_model_bytes=200_000,
        default_model=default,
    )
    with VisionClient(address, timeout=120) as client:
        for name in names:
            file, side, labels = MODELS[name]
            config = transfer_models.config(side)
            client.upload_model(files[file], name=name, config=config, labels=labels)
    return address


@pytest.fixture(scope="module")
def servers(module_server_factory, tmp_path_factory, files):
    return {
        "main": _server(module_server_factory, tmp_path_factory, files, "tiny", MODELS),
        "twin": _server(module_server_factory, tmp_path_factory, files, "twin", ["twin"]),
        "wide": _server(module_server_factory, tmp_path_factory, files, "wide", ["wide"]),
    }


@pytest.fixture(scope="module")
def client(servers):
    with VisionClient(servers["main"], timeout=240) as vision:
        yield vision


def _images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32) for _ in range(count)]


def _attack(client, servers, images, **goal):
    return client.attack(
        images,
        model="tiny",
        method="fgsm",
        eps=6 / 255,
        transfer_models=["tiny", "twin", "wide", "fox"],
        transfer_addresses=[servers["twin"], servers["wide"]],
        **goal,
    )


def _key(t):
    return (t.original_top1.label, t.top1.label, t.verdict, t.fooled)


def _expected_verdict(before: str, after: str, target: str | None, labels) -> str:
    """The rule written out: labels, never indices."""
    if target is None:
        return "fooled" if after != before else "not fooled"
    if target not in labels:
        return "not applicable"
    return "fooled" if after == target else "not fooled"


def test_untargeted_verdicts_are_the_transfer_models_own(client, servers, files):
    results = _attack(client, servers, _images(8, 3), untargeted=True)
    verdicts = []
    for r in results:
        own, twin, wide, fox, remote_twin, remote_wide = r.transfers
        assert all(not t.error for t in r.transfers)
        # The twin, local or remote, answers exactly as the network it permutes: same labels, same verdicts,
        # though every one of its classes has another index.
        assert _key(own) == _key(twin) == _key(remote_twin) == _key(fox)
        assert twin.top1.index == ORDER.index(own.top1.index)
        assert (remote_twin.address, remote_twin.model, remote_twin.model_version) == (
            servers["twin"],
            "twin",
            1,
        )
        # The transfer to itself is the attack's own judgement of the 8-bit result.
        assert own.top1.label == r.final_top[0].label and own.original_top1.label == r.original_top[0].label
        assert own.fooled == r.success
        # Another input size answers, locally and remotely alike.
        assert _key(wide) == _key(remote_wide) and remote_wide.model == "wide"
        for t, name in ((own, "tiny"), (twin, "twin"), (wide, "wide"), (remote_wide, "wide")):
            file, side, labels = MODELS[name]
            before = transfer_models.top1(files[file], r.original_png, side, labels)
            after = transfer_models.top1(files[file], r.adversarial_png, side, labels)
            assert (t.original_top1.label, t.top1.label) == (before, after)
            assert t.verdict == _expected_verdict(before, after, None, labels)
            assert (
                t.fooled == (t.verdict == "fooled") and t.model_version == 1 and len(t.weights_sha256) == 64
            )
        verdicts.append(own.verdict)
    assert set(verdicts) == {"fooled", "not fooled"}  # both kinds occur: the equalities above discriminate


def test_classify_of_the_returned_pictures_agrees_with_the_verdict(client, servers):
    (r,) = _attack(client, servers, _images(1, 5), untargeted=True)
    for t in r.transfers:
        where = t.address or servers["main"]
        with VisionClient(where, timeout=120) as other:
            side = MODELS[t.model][1]
            same = side == tiny_cnn.SIDE  # Classify's own resize exactly when the sizes differ
            (before, after) = other.classify(
                [r.original_png, r.adversarial_png], model=t.model, skip_resize=same, top_k=1
            )
        assert (before.top[0].label, after.top[0].label) == (t.original_top1.label, t.top1.label)
        assert t.fooled == (after.top[0].label != before.top[0].label)


@pytest.mark.parametrize("target", ["eel", "cat"])
def test_targeted_verdicts_compare_the_target_label(client, servers, files, target):
    results = client.attack(
        _images(4, 7),
        model="tiny",
        target=target,
        eps=32 / 255,
        steps=4,
        transfer_models=["tiny", "twin", "wide", "fox"],
        transfer_addresses=[servers["twin"], servers["wide"]],
    )
    for r in results:
        own, twin, wide, fox, remote_twin, remote_wide = r.transfers
        assert _key(own) == _key(twin) == _key(remote_twin)
        assert own.fooled == (r.final_top[0].label == target) == r.success
        for t, name in ((own, "tiny"), (twin, "twin"), (wide, "wide"), (fox, "fox"), (remote_wide, "wide")):
            file, side, labels = MODELS[name]
            after = transfer_models.top1(files[file], r.adversarial_png, side, labels)
            assert t.top1.label == after
            assert t.verdict == _expected_verdict(t.original_top1.label, after, target, labels)
        if target == "eel":  # the fox model has no class called eel: said so, not guessed
            assert (fox.verdict, fox.fooled, fox.error) == ("not applicable", False, "")
            assert "eel" in fox.note
        else:
            assert fox.verdict in ("fooled", "not fooled") and fox.note == ""


def test_the_cli_shows_both_top1s_the_version_and_not_applicable(client, servers, tmp_path, capsys):
    from nnprobe.cli import main
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray((_images(1, 9)[0] * 255).astype(np.uint8)).save(path)
    words = ["attack", str(path), "--address", servers["main"], "--model", "tiny", "--target", "eel"]
    words += ["--transfer-model", "fox", "--transfer-model", "twin", "--transfer-address", servers["wide"]]
    assert main([*words, "--method", "fgsm", "--eps", "6/255"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("transfer ")]
    (r,) = client.attack(
        [str(path)],
        model="tiny",
        target="eel",
        method="fgsm",
        eps=6 / 255,
        transfer_models=["fox", "twin"],
        transfer_addresses=[servers["wide"]],
    )
    fox, twin, wide = r.transfers
    assert len(lines) == 3
    assert lines[0].startswith("transfer x.png -> fox v1 (local sha256 ")
    assert lines[0].endswith(f": {fox.original_top1.label} -> {fox.top1.label}: not applicable ({fox.note})")
    assert lines[1].endswith(f": {twin.original_top1.label} -> {twin.top1.label}: {twin.verdict}")
    assert lines[2].startswith(
        f"transfer x.png -> wide v1 ({servers['wide']} sha256 {wide.weights_sha256[:12]})"
    )


@pytest.fixture(scope="module")
def imagenet(module_server_factory, tmp_path_factory, files):
    """A server whose default is the ImageNet model, with the 5-class tiny CNN in its repository."""
    address = _server(module_server_factory, tmp_path_factory, files, "efficientnet_lite0", ["tiny"])
    with VisionClient(address, timeout=300) as vision:
        yield vision


def _imagenet_top1(png: bytes) -> str:
    """The ImageNet model's top-1 label of a 16 x 16 PNG, preprocessed here with PIL: the shorter side to
    256 (bilinear, antialiased), the centre 224 x 224; then torchvision's ImageNet labels."""
    import io

    from PIL import Image
    from torchvision.models import ResNet18_Weights

    from tests.support import vision_reference

    picture = Image.open(io.BytesIO(png)).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.crop((16, 16, 240, 240)).save(buffer, format="PNG")
    index = int(vision_reference.probabilities(vision_reference.lite0(), buffer.getvalue()).argmax())
    return ResNet18_Weights.IMAGENET1K_V1.meta["categories"][index]


def test_a_five_class_model_and_the_imagenet_model_judge_each_other_in_their_own_labels(
    imagenet, shared_dir, files
):
    # The 5-class model attacked; the ImageNet model (224 x 224) judges the 16 x 16 pictures by its labels.
    (small,) = imagenet.attack(
        _images(1, 11),
        model="tiny",
        untargeted=True,
        method="fgsm",
        eps=16 / 255,
        transfer_models=["efficientnet_lite0"],
    )
    (big,) = small.transfers
    assert not big.error and big.model_version == 0 and len(big.weights_sha256) == 64
    before, after = _imagenet_top1(small.original_png), _imagenet_top1(small.adversarial_png)
    assert (big.original_top1.label, big.top1.label) == (before, after)
    assert big.verdict == _expected_verdict(before, after, None, ())
    # The ImageNet model attacked towards tiger on the lion photo: the 5-class model has no tiger.
    lion = shared_dir / "data" / "seed-images" / "n02129165_2762_lion.jpg"
    (r,) = imagenet.attack(lion, target="tiger", method="fgsm", eps=2 / 255, transfer_models=["tiny"])
    (tiny,) = r.transfers
    assert (tiny.verdict, tiny.fooled, tiny.model_version) == ("not applicable", False, 1)
    assert "tiger" in tiny.note
    # Untargeted, the 5-class model's verdict is its own top-1 on the original against the adversarial one.
    (u,) = imagenet.attack(lion, untargeted=True, method="fgsm", eps=2 / 255, transfer_models=["tiny"])
    (tiny,) = u.transfers
    expected = [
        transfer_models.top1(files["tiny"], png, tiny_cnn.SIDE, tiny_cnn.LABELS)
        for png in (u.original_png, u.adversarial_png)
    ]  # 224 x 224 pictures resized to 16 x 16
    assert [tiny.original_top1.label, tiny.top1.label] == expected
    assert tiny.verdict == _expected_verdict(*expected, None, tiny_cnn.LABELS)
