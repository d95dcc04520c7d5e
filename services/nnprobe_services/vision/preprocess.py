"""Images in, model-ready pixels out: decoding with limits, conversion to RGB, resize and centre crop.

The output is a float32 (3, H, W) tensor in [0, 1]: the pixels a model sees (and an attack perturbs)
before the normalisation inside the model. Every failure is an ``ImageError`` saying what is wrong.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from nnprobe_services.vision.models import Preprocessing

#: Encoded formats accepted (PIL's format names).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


class ImageError(ValueError):
    """The image cannot be used; ``kind`` is ``invalid`` or ``too_large``."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


def decode(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Encoded bytes -> an RGB PIL image. The size is checked from the header before decoding."""
    if not data:
        raise ImageError("is empty")
    if len(data) > max_bytes:
        raise ImageError(f"is {len(data)} bytes; the limit is {max_bytes}", "too_large")
    try:
        with warnings.catch_warnings():
            # The configured pixel limit below decides; PIL's own (2x its limit) still errors first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageError(str(error), "too_large") from None
    except (OSError, ValueError) as error:
        raise ImageError(f"is not a readable image ({error})") from None
    if image.format not in FORMATS:
        raise ImageError(f"has format {image.format}; supported are {', '.join(FORMATS)}")
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"has zero size ({width} x {height})")
    if width * height > max_pixels:
        raise ImageError(
            f"is {width} x {height} = {width * height} pixels; the limit is {max_pixels}", "too_large"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"is corrupt or truncated ({error})") from None
    if image.format == "JPEG":
        image = ImageOps.exif_transpose(image) or image
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, palette, CMYK and alpha images to RGB; transparent pixels go over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode != "F" and values.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            scale = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        image = Image.fromarray(np.clip(np.rint(values / scale * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def from_pixels(pixels: np.ndarray, *, max_pixels: int) -> Image.Image | torch.Tensor:
    """A raw (H, W, C) array -> an RGB PIL image (uint8) or a (3, H, W) float tensor in [0, 1] (float)."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ImageError(f"must be (H, W, C) with C in 1, 3, 4, got shape {list(pixels.shape)}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height == 0 or width == 0:
        raise ImageError(f"has zero size ({width} x {height})")
    if height * width > max_pixels:
        raise ImageError(
            f"is {width} x {height} = {width * height} pixels; the limit is {max_pixels}", "too_large"
        )
    if pixels.dtype == np.uint8:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
        array = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        return to_rgb(Image.fromarray(np.ascontiguousarray(array), mode))
    if pixels.dtype.kind != "f":
        raise ImageError(f"must be uint8 or float32/float64, not {pixels.dtype}")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
        raise ImageError(f"float pixels must lie in [0, 1], got [{pixels.min():g}, {pixels.max():g}]")
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)
    if tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1).contiguous()
    if tensor.shape[0] == 4:
        rgb, alpha = tensor[:3], tensor[3:]
        return rgb * alpha + (1 - alpha)
    return tensor


def model_input(
    image: Image.Image | torch.Tensor, prep: Preprocessing, *, skip_resize: bool = False
) -> torch.Tensor:
    """Resize the shorter side to ``prep.resize``, centre-crop ``prep.crop``, scale to [0, 1]: (3, H, W).

    PIL images are resized by PIL (antialiased), as torchvision's transforms do for them; float tensors
    by torchvision's antialiased tensor resize. With ``skip_resize`` the image must already be the crop
    size and is only scaled.
    """
    if skip_resize:
        size = (image.size[1], image.size[0]) if isinstance(image, Image.Image) else tuple(image.shape[1:])
        if tuple(size) != prep.crop:
            raise ImageError(
                f"is {size[0]} x {size[1]} (H x W); with skip_resize it must be "
                f"{prep.crop[0]} x {prep.crop[1]}"
            )
    else:
        mode = INTERPOLATIONS[prep.interpolation]
        image = TF.resize(image, [prep.resize], interpolation=mode, antialias=True)
        image = TF.center_crop(image, list(prep.crop))
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image).float().div(255.0)
    return image.clamp(0.0, 1.0).float()
