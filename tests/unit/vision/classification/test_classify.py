"""Classification core: the offline default model against its reference implementation, preprocessing,
decoding limits and conversions, weights resolution."""

import hashlib
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import registry as models
from nnprobe_services.vision.models import store
from PIL import Image

SEED_TOP1 = {
    "snake": (58, "water snake"),
    "lizard": (42, "agama"),
    "scorpion": (71, "scorpion"),
    "lion": (291, "lion"),
    "tiger": (292, "tiger"),
}
LITE0 = models.records()["efficientnet_lite0"]
LIMITS = preprocess.ImageLimits(1 << 26, 1 << 26)


def _seed_files(shared_dir):
    return sorted((shared_dir / "data" / "seed-images").glob("*.jpg"), key=lambda p: p.stem.split("_")[-1])


@pytest.fixture(scope="module")
def lite0():
    return store.ModelStore(torch.device("cpu")).get("efficientnet_lite0")


@pytest.fixture(scope="module")
def seed_pixels(shared_dir):
    files = _seed_files(shared_dir)
    return [f.stem.split("_")[-1] for f in files], torch.stack(
        [preprocess.prepare(f.read_bytes(), LITE0.preprocessing, field="image", limits=LIMITS) for f in files]
    )


def test_positional_mapping_reproduces_the_reference_logits(lite0, seed_pixels):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0.path)).eval()
    _, pixels = seed_pixels
    normalised = (pixels - torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        models.IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(normalised)
        # The weights mapped onto timm's network, in the reference's NCHW memory format: bit for bit.
        nchw = models.load_module(lite0.record, lite0.path, torch.device("cpu"))
        assert float((nchw(pixels) - expected).abs().max()) == 0.0
    # As served on the CPU (channels_last kernels): equal up to float rounding.
    ours = lite0.predict(pixels)
    assert float((ours - expected).abs().max()) < 1e-4
    assert lite0.version == models.sha256_of(lite0.path) and len(lite0.version) == 64


def test_preprocessing_matches_torchvision_transforms(shared_dir, seed_pixels):
    from torchvision import transforms

    pipeline = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    first = _seed_files(shared_dir)[0]
    expected = pipeline(Image.open(first).convert("RGB"))
    assert torch.equal(seed_pixels[1][0], expected)


def test_seed_images_and_chelsea_top1(lite0, seed_pixels):
    from skimage.data import chelsea

    names, pixels = seed_pixels
    logits = lite0.predict(pixels).numpy()
    got = {
        name: (top[0].index, top[0].label)
        for name, top in zip(names, (classify.top_k(r, 1) for r in logits), strict=True)
    }
    assert got == SEED_TOP1
    cat = preprocess.prepare(chelsea(), LITE0.preprocessing, field="image", limits=LIMITS)
    top3 = classify.top_k(lite0.predict(cat[None]).numpy()[0], 3)
    assert [c.label for c in top3] == ["Egyptian cat", "tabby", "tiger cat"]
    assert all(281 <= c.index <= 285 for c in top3)


def test_top_k_is_a_sorted_softmax():
    logits = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    top = classify.top_k(logits, 4)
    assert [c.index for c in top] == [1, 3, 2, 0]  # ties by index
    p = np.exp(logits.astype(np.float64) - 3.0)
    p /= p.sum()
    assert [c.probability for c in top] == pytest.approx([p[1], p[3], p[2], p[0]], abs=1e-15)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _decode(data: bytes, max_pixels: int = 1 << 26, max_bytes: int = 1 << 26) -> Image.Image:
    return preprocess.decode(data, field="image", limits=preprocess.ImageLimits(max_bytes, max_pixels))


def test_modes_are_converted_to_rgb():
    gray = Image.new("L", (4, 3), 77)
    assert np.asarray(_decode(_encode(gray, "PNG"))).tolist() == [[[77] * 3] * 4] * 3
    palette = Image.new("P", (2, 2))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert _decode(_encode(palette, "BMP")).getpixel((0, 0)) == (10, 20, 30)
    rgba = Image.new("RGBA", (2, 2), (200, 100, 0, 0))  # fully transparent: white
    rgba.putpixel((1, 1), (200, 100, 0, 255))
    out = _decode(_encode(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 100, 0)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    red = np.asarray(_decode(_encode(cmyk, "JPEG", quality=100))).astype(int)
    assert abs(red[..., 0] - 255).max() <= 2 and red[..., 1:].max() <= 2
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert _decode(_encode(deep, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    webp = _decode(_encode(Image.new("RGB", (3, 3), (0, 128, 255)), "WEBP", lossless=True))
    assert webp.getpixel((1, 1)) == (0, 128, 255)


@pytest.mark.parametrize(
    ("data", "limits", "message", "kind"),
    [
        (b"", {}, "is empty", "invalid"),
        (b"not an image at all", {}, "is not a readable image", "invalid"),
        ("ppm", {}, "has format PPM", "invalid"),
        ("truncated", {}, "is corrupt or truncated", "invalid"),
        ("png", {"max_bytes": 10}, "bytes; the limit is 10", "too_large"),
        (
            "big",
            {"max_pixels": 1_000_000},
            "is 2000 x 2000 = 4000000 pixels; the limit is 1000000",
            "too_large",
        ),
    ],
)
def test_bad_bytes(data, limits, message, kind):
    sample = Image.new("RGB", (16, 16), (1, 2, 3))
    payloads = {
        "ppm": _encode(sample, "PPM"),
        "png": _encode(sample, "PNG"),
        "truncated": _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:200],
        "big": _encode(Image.new("L", (2000, 2000)), "PNG"),
    }
    error = ResourceExhausted if kind == "too_large" else InvalidArgument
    with pytest.raises(error, match=message) as caught:
        _decode(payloads.get(data, data) if isinstance(data, str) else data, **limits)
    assert caught.value.field == "image"


SMALL = preprocess.ImageLimits(1 << 20, 100)


def test_raw_pixels():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.asarray(preprocess.from_pixels(rgb, field="p", limits=SMALL)).tolist() == rgb.tolist()
    floats = preprocess.from_pixels(np.full((2, 2, 1), 0.25), field="p", limits=SMALL)
    assert isinstance(floats, torch.Tensor) and floats.shape == (3, 2, 2) and float(floats.max()) == 0.25
    rgba = preprocess.from_pixels(np.array([[[1.0, 0.0, 0.0, 0.5]]]), field="p", limits=SMALL)
    assert rgba[:, 0, 0].tolist() == [1.0, 0.5, 0.5]
    for bad, message in [
        (np.zeros((0, 4, 3), np.uint8), "zero size"),
        (np.zeros((4, 4, 2), np.uint8), "C in 1, 3, 4"),
        (np.full((4, 4, 3), 1.5), r"lie in \[0, 1\]"),
        (np.zeros((4, 4, 3), np.int32), "uint8 or float"),
        (np.zeros((20, 20, 3), np.uint8), "the limit is 100"),
    ]:
        with pytest.raises((InvalidArgument, ResourceExhausted), match=message) as caught:
            preprocess.from_pixels(bad, field="p", limits=SMALL)
        assert caught.value.field == "p"


def test_skip_resize_needs_the_input_size():
    prep = LITE0.preprocessing
    options = {"field": "image", "max_pixels": 1 << 20, "skip_resize": True}
    exact = preprocess.model_input(Image.new("RGB", (224, 224), (255, 0, 0)), prep, **options)
    assert exact.shape == (3, 224, 224) and float(exact[0].min()) == 1.0
    with pytest.raises(InvalidArgument, match="must be 224 x 224"):
        preprocess.model_input(Image.new("RGB", (300, 224)), prep, **options)


def test_weights_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    record = models.records()["alexnet"]
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    folder, explicit = tmp_path / "weights", tmp_path / "mine.pth"
    absent = models.locate(record, explicit, folder)
    assert absent.path is None
    assert absent.searched == (str(explicit), str(folder / record.file_name), str(hub))
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"hub")
    assert models.locate(record, explicit, folder).path == hub
    folder.mkdir()
    (folder / record.file_name).write_bytes(b"folder")
    assert models.locate(record, explicit, folder).path == folder / record.file_name
    explicit.write_bytes(b"explicit")
    assert models.locate(record, explicit, folder).path == explicit
    with pytest.raises(models.WeightsMissing, match="downloads are off"):
        models.download(record, 0)
    assert models.sha256_of(explicit) == hashlib.sha256(b"explicit").hexdigest()


def test_records_carry_their_own_preprocessing():
    names = list(models.records())
    assert names[:2] == ["efficientnet_lite0", "alexnet"] and {"vgg16", "resnet18", "resnet50"} <= set(names)
    for record in models.records().values():
        assert record.preprocessing == models.Preprocessing(
            256, (224, 224), "bilinear", models.IMAGENET_MEAN, models.IMAGENET_STD
        )
        assert record.num_classes == 1000
    assert models.records()["resnet50"].file_name == "resnet50-0676ba61.pth"
    assert len(models.imagenet_labels()) == 1000 and models.imagenet_labels()[292] == "tiger"


def test_remote_transfer_calls_are_capped_within_the_request_deadline():
    from nnprobe_services.vision.attacks import transfer

    assert transfer.call_timeout(None) == transfer.REMOTE_TIMEOUT_SECONDS
    assert transfer.call_timeout(3.5) == 3.5 - transfer.ANSWER_MARGIN_SECONDS  # time left to answer
    assert transfer.call_timeout(transfer.ANSWER_MARGIN_SECONDS / 2) == 0.001  # over at once, never negative
    assert transfer.call_timeout(1e6) == transfer.REMOTE_TIMEOUT_SECONDS
    assert transfer.address_problem("vision-peer:50051") == ""
    assert transfer.address_problem("dns:///vision.nnprobe.svc:50051") == ""
    assert transfer.address_problem("[::1]:50051") == ""
    assert "not a host:port" in transfer.address_problem("a b:1")


@settings(max_examples=300, deadline=None)
@given(
    host=st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    ),
    port=st.integers(-5, 70_000),
)
def test_transfer_addresses_are_host_and_a_port_in_range(host, port):
    """A transfer address is refused at once unless gRPC could dial it: a port in 1..65535, an IPv6 host in
    brackets; otherwise the call would wait for a connection that can never come."""
    from nnprobe_services.vision.attacks import transfer

    address = f"{host}:{port}"
    assert (transfer.address_problem(address) == "") == (1 <= port <= 65535 and "-" not in str(port))
    if ":" in host.strip("[]"):  # an IPv6 literal without its brackets
        assert transfer.address_problem(f"{host.strip('[]')}:{abs(port) or 1}") != ""


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab1:[]./-", max_size=12))
def test_an_accepted_transfer_address_ends_in_a_port(text):
    from nnprobe_services.vision.attacks import transfer

    if transfer.address_problem(text) == "" and text.split(":", 1)[0] not in ("dns", "ipv4", "ipv6", "unix"):
        host, _, port = text.rpartition(":")
        assert host and port.isdigit() and 1 <= int(port) <= 65535
    for bad in ("::::", "host:", ":50051", "host:0", "host:65536", "[::1", "[zz]:1"):
        assert transfer.address_problem(bad) != ""
