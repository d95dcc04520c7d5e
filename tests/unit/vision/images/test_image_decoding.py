"""Decoding follows what each file declares (depth, palette, transparency, orientation) in every container
Pillow reads; each decoded image is compared with a reference built here in NumPy from the values written."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import registry as models
from PIL import Image

LIMITS = preprocess.ImageLimits(1 << 24, 1 << 22)
PREP = models.records()["efficientnet_lite0"].preprocessing


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(preprocess.decode(data, field="images[0].encoded", limits=LIMITS)).astype(int)


def _pattern(height=6, width=10) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows * 40 % 256, columns * 25 % 256, (rows + columns) * 13 % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_gray_keeps_its_declared_scale(fmt):
    # Dark 16-bit values (all below 256) are dark: their high byte is 0, whatever the maximum found.
    dark = np.arange(0, 200, 10, dtype=np.uint16).reshape(4, 5)
    assert _decoded(_encode(Image.fromarray(dark), fmt)).max() == 0
    full = np.array([[0, 255, 256, 32768, 65280, 65535]], dtype=np.uint16)
    expected = np.repeat((full >> 8)[..., None], 3, -1)
    assert np.array_equal(_decoded(_encode(Image.fromarray(full), fmt)), expected)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF"])
def test_palette_with_and_without_a_transparent_index(fmt):
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    colours = np.array(palette[:9]).reshape(3, 3)
    assert np.array_equal(_decoded(_encode(image, fmt)), colours[indices])
    if fmt in ("PNG", "GIF"):  # the containers that declare a transparent index
        with_key = colours.copy()
        with_key[1] = 255
        assert np.array_equal(_decoded(_encode(image, fmt, transparency=1)), with_key[indices])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_transparent_colour_goes_over_white(mode):
    pattern = _pattern()
    image = Image.fromarray(pattern[..., 0] if mode == "L" else pattern, mode)
    key = int(pattern[1, 0, 0]) if mode == "L" else tuple(int(v) for v in pattern[1, 0])
    expected = np.repeat(pattern[..., :1], 3, -1) if mode == "L" else pattern.copy()
    hidden = (pattern[..., 0] == key) if mode == "L" else np.all(pattern == np.array(key), -1)
    expected = expected.astype(int)
    expected[hidden] = 255
    assert np.array_equal(_decoded(_encode(image, "PNG", transparency=key)), expected)


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_alpha_composited_over_white(fmt, options):
    pattern = _pattern()
    alpha = np.tile(np.array([0, 255, 128, 255, 0], dtype=np.uint8), (6, 2))
    data = _encode(Image.fromarray(np.dstack([pattern, alpha]), "RGBA"), fmt, **options)
    a = alpha[..., None] / 255.0
    expected = pattern * a + 255 * (1 - a)
    assert np.abs(_decoded(data) - expected).max() <= 1.0  # rounding of the half-transparent pixels
    opaque = alpha == 255
    assert np.array_equal(_decoded(data)[opaque], pattern[opaque].astype(int))


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("JPEG", {"quality": 100, "subsampling": 0}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("TIFF", {}, 0),
    ],
)
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_in_every_container(fmt, options, tolerance, orientation):
    pattern = np.kron(_pattern(4, 6), np.ones((8, 8, 1), dtype=np.uint8))  # 8x8 blocks survive JPEG
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(pattern), fmt, exif=exif.tobytes(), **options)
    # EXIF 3: rotated 180; 6: shown rotated 90 clockwise; 8: 90 counter-clockwise.
    expected = {1: pattern, 3: pattern[::-1, ::-1], 6: np.rot90(pattern, -1), 8: np.rot90(pattern, 1)}
    decoded = _decoded(data)
    assert decoded.shape == expected[orientation].shape
    assert np.abs(decoded - expected[orientation].astype(int)).max() <= tolerance


def test_bilevel_float_and_first_frame():
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    for fmt in ("PNG", "BMP", "TIFF"):
        assert np.array_equal(_decoded(_encode(Image.fromarray(bits), fmt))[..., 0], bits * 255)
    floats = np.array([[0.0, 0.25, 0.5, 1.0, 1.5]], dtype=np.float32)  # declared 0..1; above 1 is white
    assert _decoded(_encode(Image.fromarray(floats, "F"), "TIFF"))[0, :, 0].tolist() == [0, 64, 128, 255, 255]
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    animated = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert _decoded(animated)[0, 0].tolist() == [255, 0, 0]


def test_signed_integer_samples_are_refused_with_the_field():
    data = _encode(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), "I"), "TIFF")
    with pytest.raises(InvalidArgument, match="signed integer samples") as caught:
        _decoded(data)
    assert caught.value.field == "images[0].encoded"


def test_a_long_thin_image_is_cropped_without_materialising_its_resize():
    # 1 x 40,000 would resize to 256 x 10,240,000 (2.6 G pixels): only the 224 x 224 crop is computed.
    row = np.zeros((1, 40_000, 3), dtype=np.uint8)
    row[0, :, 0] = np.arange(40_000) % 256
    data = _encode(Image.fromarray(row), "PNG")
    pixels = preprocess.prepare(data, PREP, field="images[0].encoded", limits=LIMITS)
    assert pixels.shape == (3, 224, 224)
    # The crop covers source columns 19,999.56..20,000.44: bilinear upsampling between pixels 19,999 and
    # 20,000 (values 31 and 32), constant down each column and in the other channels.
    assert torch.all(pixels[1:] == 0) and torch.all(pixels[0] == pixels[0, :1])
    levels = (pixels[0] * 255).round()
    assert float(levels.min()) == 31 and float(levels.max()) == 32
    tall = preprocess.from_pixels(np.zeros((40_000, 1, 3), np.float32), field="f", limits=LIMITS)
    with pytest.raises(ResourceExhausted, match="gives 10240000 x 256") as caught:
        preprocess.model_input(tall, PREP, field="f", max_pixels=LIMITS.max_pixels)
    assert caught.value.field == "f"


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300))
def test_crop_of_any_shape_equals_the_full_resize(height, width):
    # The box resize (forced by a pixel limit below the resized size) against a full PIL resize + crop
    # written here: the same values up to one 8-bit level.
    generator = np.random.default_rng(height * 1000 + width)
    image = Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
    size = (int(256 * width / height), 256) if height <= width else (256, int(256 * height / width))
    if size[0] * size[1] > 1 << 22:
        return  # the reference itself would be too large
    full = np.asarray(image.resize(size, Image.Resampling.BILINEAR)).astype(int)
    top, left = round((size[1] - 224) / 2), round((size[0] - 224) / 2)
    reference = full[top : top + 224, left : left + 224].transpose(2, 0, 1)
    boxed = preprocess.model_input(image, PREP, field="f", max_pixels=1) * 255
    assert np.abs(boxed.round().numpy().astype(int) - reference).max() <= 1
    exact = preprocess.model_input(image, PREP, field="f", max_pixels=1 << 22) * 255
    assert np.array_equal(exact.round().numpy().astype(int), reference)
