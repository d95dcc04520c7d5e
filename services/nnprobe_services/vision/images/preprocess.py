"""Images in, model-ready pixels out: the one place where images are decoded, converted to RGB, resized
and cropped, for classification, attacks and receptive-field pictures.

Plain Python in, arrays out, no gRPC: every function takes the request field it reads (``images[2].encoded``)
and raises ``InvalidArgument`` or ``ResourceExhausted`` naming it.

* Decoding follows what the file declares (Pillow reads the container): the first frame; the EXIF
  orientation tag in every container (``ImageOps.exif_transpose``); palettes; transparency (an alpha channel,
  a palette's or a tRNS colour) composited over white; and bit depth: 16-bit samples keep their high byte
  (``v >> 8``, as Pillow reads 16-bit colour and libpng's ``png_set_strip_16`` does), 32-bit integer TIFF
  samples their top 8 of the declared bits, float TIFF samples are scaled from their declared
  SMinSampleValue..SMaxSampleValue (default 0..1). Nothing is inferred from the pixel values found.
* Memory is bounded before anything is allocated: the header's size against ``max_pixels`` (a JPEG larger
  than that is decoded at 1/2, 1/4 or 1/8 scale by ``Image.draft`` when that fits and still covers the
  resize), and the resize computes only the pixels the centre crop keeps (PIL's ``resize(box=...)``), so an
  image of 1 x 40,000 pixels never becomes 256 x 10,240,000.

The output of ``model_input`` is a float32 (3, H, W) tensor in [0, 1]: the pixels a model sees (and an
attack perturbs) before the normalisation inside the model. Resizing follows torchvision's ``Resize`` (the
shorter side to ``resize``, the longer ``int(resize * long / short)``) and ``CenterCrop``.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from nnprobe_services.errors import InvalidArgument, ResourceExhausted

#: Encoded formats accepted (PIL's format names).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
#: An object's default representation, as Pillow writes the stream it read into its messages.
_OBJECT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
#: What a corrupt file can make Pillow's decoders raise.
_CORRUPT = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, KeyError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images: shorter side resized to ``resize`` with ``interpolation``, centre crop
    ``crop`` (height, width), pixels / 255, then (x - mean) / std per RGB channel."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ImageLimits:
    """Largest encoded image (bytes) and largest decoded or intermediate image (width x height)."""

    max_bytes: int
    max_pixels: int


def _reason(error: Exception) -> str:
    """The decoder's reason without the server's object representations (``<_io.BytesIO object at
    0x7f...>``, which Pillow puts in its messages)."""
    return _OBJECT.sub("the bytes", str(error)).strip() or type(error).__name__


def decode(
    data: bytes, *, field: str, limits: ImageLimits, label: str = "the image", min_side: int | None = None
) -> Image.Image:
    """Encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF) -> an RGB 8-bit PIL image, upright.

    The size is checked from the header before decoding. With ``min_side``, a JPEG over ``max_pixels`` is
    decoded at the smallest DCT scale (Pillow's ``draft``) that fits, if its shorter side stays
    ``>= min_side``. Raises ``InvalidArgument`` (empty, unreadable, unsupported, corrupt) or
    ``ResourceExhausted`` (bytes or pixels over the limits) on ``field``; messages start with ``label``.
    """
    if not data:
        raise InvalidArgument(f"{label} is empty", field=field)
    if len(data) > limits.max_bytes:
        raise ResourceExhausted(f"{label} is {len(data)} bytes; the limit is {limits.max_bytes}", field=field)
    try:
        with warnings.catch_warnings():
            # The configured pixel limit below decides; PIL's own (2x its limit) still errors first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ResourceExhausted(f"{label} is too large: {_reason(error)}", field=field) from None
    except _CORRUPT as error:
        raise InvalidArgument(f"{label} is not a readable image ({_reason(error)})", field=field) from None
    if image.format not in FORMATS:
        raise InvalidArgument(
            f"{label} has format {image.format}; supported are {', '.join(FORMATS)}", field=field
        )
    width, height = image.size
    if width == 0 or height == 0:
        raise InvalidArgument(f"{label} has zero size ({width} x {height})", field=field)
    if width * height > limits.max_pixels:
        if image.format == "JPEG" and min_side is not None:
            _draft(image, limits.max_pixels, min_side)
        if image.size[0] * image.size[1] > limits.max_pixels:
            raise ResourceExhausted(
                f"{label} is {width} x {height} = {width * height} pixels; the limit is {limits.max_pixels}",
                field=field,
            )
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image, field=field, label=label)
    except (InvalidArgument, ResourceExhausted):
        raise
    except _CORRUPT as error:
        raise InvalidArgument(f"{label} is corrupt or truncated ({_reason(error)})", field=field) from None


def _draft(image: Image.Image, max_pixels: int, min_side: int) -> None:
    width, height = image.size
    for scale in (2, 4, 8):
        size = (-(-width // scale), -(-height // scale))
        if size[0] * size[1] <= max_pixels:
            if min(size) >= min_side:
                image.draft(image.mode, size)
            return


def decode_array(data: bytes, *, field: str, limits: ImageLimits, label: str = "the image") -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8, decoded as ``decode`` does (no draft: every pixel)."""
    return np.asarray(decode(data, field=field, limits=limits, label=label))


def to_rgb(image: Image.Image, *, field: str = "image", label: str = "the image") -> Image.Image:
    """Any Pillow mode to RGB 8-bit by its declared depth; transparent pixels go over white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.uint16)
        gray = Image.fromarray((values >> 8).astype(np.uint8), "L")
        if "transparency" in image.info:
            alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
            return _over_white(Image.merge("LA", (gray, Image.fromarray(alpha, "L"))))
        return gray.convert("RGB")
    if mode == "I":
        return _declared_integers(image, field, label).convert("RGB")
    if mode == "F":
        return _declared_floats(image).convert("RGB")
    if mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")  # palette, tRNS gray or colour: Pillow builds the alpha channel
    if image.mode in _ALPHA:
        return _over_white(image)
    try:
        return image.convert("RGB") if image.mode != "RGB" else image
    except ValueError as error:
        raise InvalidArgument(
            f"{label} has mode {mode}, which has no RGB form ({_reason(error)})", field=field
        ) from None


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _tag(image: Image.Image, number: int, default: object) -> object:
    tags = getattr(image, "tag_v2", None)
    value = tags.get(number, default) if tags is not None else default
    return value[0] if isinstance(value, tuple) and value else value


def _declared_integers(image: Image.Image, field: str, label: str) -> Image.Image:
    """32-bit integer samples: TIFF's BitsPerSample (258) and SampleFormat (339, 1 = unsigned)."""
    bits, sample_format = _tag(image, 258, None), _tag(image, 339, 1)
    if not isinstance(bits, int) or sample_format != 1 or not 8 <= bits <= 32:
        raise InvalidArgument(
            f"{label} has {bits}-bit {'unsigned' if sample_format == 1 else 'signed'} integer samples; "
            f"supported are unsigned integers of 8 to 32 bits",
            field=field,
        )
    values = np.asarray(image).astype(np.int64) & ((1 << bits) - 1)
    return Image.fromarray((values >> (bits - 8)).astype(np.uint8), "L")


def _declared_floats(image: Image.Image) -> Image.Image:
    """Float samples: TIFF's SMinSampleValue (340) .. SMaxSampleValue (341), 0..1 when not declared."""
    low, high = float(_tag(image, 340, 0.0)), float(_tag(image, 341, 1.0))  # type: ignore[arg-type]
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=low)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return Image.fromarray(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8), "L")


def from_pixels(
    pixels: np.ndarray, *, field: str, limits: ImageLimits, label: str = "the image"
) -> Image.Image | torch.Tensor:
    """A raw (H, W, C) array, C in 1, 3, 4 -> an RGB PIL image (uint8) or a (3, H, W) float tensor in
    [0, 1] (float input; alpha composited over white). Raises ``InvalidArgument``/``ResourceExhausted``."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise InvalidArgument(
            f"{label} must be (H, W, C) with C in 1, 3, 4, got shape {list(pixels.shape)}", field=field
        )
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height == 0 or width == 0:
        raise InvalidArgument(f"{label} has zero size ({width} x {height})", field=field)
    if height * width > limits.max_pixels:
        raise ResourceExhausted(
            f"{label} is {width} x {height} = {width * height} pixels; the limit is {limits.max_pixels}",
            field=field,
        )
    if pixels.dtype == np.uint8:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
        array = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        return to_rgb(Image.fromarray(np.ascontiguousarray(array), mode), field=field, label=label)
    if pixels.dtype.kind != "f":
        raise InvalidArgument(f"{label} must be uint8 or float32/float64, not {pixels.dtype}", field=field)
    if pixels.size and not (pixels.min() >= 0 and pixels.max() <= 1):
        raise InvalidArgument(
            f"{label}: float pixels must lie in [0, 1], got [{pixels.min():g}, {pixels.max():g}]", field=field
        )
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)
    if tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1).contiguous()
    if tensor.shape[0] == 4:
        rgb, alpha = tensor[:3], tensor[3:]
        return rgb * alpha + (1 - alpha)
    return tensor


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(H, W) after torchvision's ``Resize(resize)``: the shorter side to ``resize``, the other
    ``int(resize * long / short)``."""
    if height <= width:
        return resize, int(resize * width / height)
    return int(resize * height / width), resize


def model_input(
    image: Image.Image | torch.Tensor,
    prep: Preprocessing,
    *,
    field: str,
    max_pixels: int,
    label: str = "the image",
    skip_resize: bool = False,
) -> torch.Tensor:
    """Resize the shorter side to ``prep.resize``, centre-crop ``prep.crop``, scale to [0, 1]: (3, H, W).

    PIL images are resized by PIL (antialiased), as torchvision's transforms do; when the resized image
    would hold more than ``max_pixels`` pixels, only the cropped ones are computed (``resize(box=...)``
    over the crop's source region with the full resize's filter support: the same values up to float
    rounding of the filter weights, at most one 8-bit level at a few pixels). Float tensors are resized
    whole by torchvision's antialiased tensor resize, so a resized size over ``max_pixels`` raises
    ``ResourceExhausted``. With ``skip_resize`` the image must already be the crop size
    (``InvalidArgument`` otherwise) and is only scaled.
    """
    if isinstance(image, Image.Image):
        height, width = image.size[1], image.size[0]
    else:
        height, width = int(image.shape[1]), int(image.shape[2])
    crop_h, crop_w = prep.crop
    if skip_resize:
        if (height, width) != (crop_h, crop_w):
            raise InvalidArgument(
                f"{label} is {height} x {width} (H x W); with skip_resize it must be {crop_h} x {crop_w}",
                field=field,
            )
    else:
        new_h, new_w = resized_size(height, width, prep.resize)
        if new_h < crop_h or new_w < crop_w:
            raise InvalidArgument(
                f"{label}: resizing {height} x {width} gives {new_h} x {new_w}, smaller than the "
                f"{crop_h} x {crop_w} crop",
                field=field,
            )
        top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)
        if isinstance(image, Image.Image) and new_h * new_w > max_pixels:
            sy, sx = height / new_h, width / new_w
            box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
            image = image.resize((crop_w, crop_h), _RESAMPLE[prep.interpolation], box=box)
        elif isinstance(image, Image.Image):  # small enough: exactly torchvision's Resize + CenterCrop
            mode = INTERPOLATIONS[prep.interpolation]
            image = TF.resize(image, [prep.resize], interpolation=mode, antialias=True)
            image = TF.center_crop(image, [crop_h, crop_w])
        else:
            if new_h * new_w > max_pixels:
                raise ResourceExhausted(
                    f"{label}: resizing {height} x {width} float pixels gives {new_h} x {new_w} = "
                    f"{new_h * new_w} pixels; the limit is {max_pixels}",
                    field=field,
                )
            mode = INTERPOLATIONS[prep.interpolation]
            resized: torch.Tensor = TF.resize(image, [new_h, new_w], interpolation=mode, antialias=True)
            image = resized[:, top : top + crop_h, left : left + crop_w]
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image).float().div(255.0)
    return image.clamp(0.0, 1.0).float()


def prepare(
    source: bytes | np.ndarray,
    prep: Preprocessing,
    *,
    field: str,
    limits: ImageLimits,
    label: str = "the image",
    skip_resize: bool = False,
) -> torch.Tensor:
    """Encoded bytes or a raw (H, W, C) array -> the model input (3, H, W) float32 in [0, 1]."""
    if isinstance(source, np.ndarray):
        image = from_pixels(source, field=field, limits=limits, label=label)
    else:
        min_side = None if skip_resize else prep.resize
        image = decode(source, field=field, limits=limits, label=label, min_side=min_side)
    return model_input(
        image, prep, field=field, max_pixels=limits.max_pixels, label=label, skip_resize=skip_resize
    )
