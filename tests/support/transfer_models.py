"""Transfer models made from the tests' tiny CNN: a twin whose classes are numbered in another order (its
logits and labels permuted alike), and the same network at another input size; with the reference
classification of a PNG by onnxruntime on the file, preprocessed here with PIL."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tests.support import tiny_cnn


class Permuted(nn.Module):
    """``net`` with its outputs reordered: output ``j`` is ``net``'s output ``order[j]``."""

    def __init__(self, net: nn.Module, order: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("order", torch.tensor(list(order), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).index_select(1, self.order)


def permuted_labels(order: Sequence[int]) -> tuple[str, ...]:
    """The labels of ``Permuted(net, order)``: label ``j`` is the original label ``order[j]``."""
    return tuple(tiny_cnn.LABELS[i] for i in order)


def onnx_bytes(net: nn.Module, side: int) -> bytes:
    """``net`` exported for (N, 3, side, side) inputs named ``x``."""
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.rand(2, 3, side, side),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    return buffer.getvalue()


def config(side: int) -> dict:
    """config.yaml of a ``side`` x ``side`` model with the tiny CNN's normalisation (resize: ``side``)."""
    return {
        "input": {"height": side, "width": side},
        "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
    }


def top1(path: Path, png: bytes, side: int, labels: Sequence[str]) -> str:
    """The top-1 label of the picture ``png`` by onnxruntime on the ONNX file ``path``: the picture is
    resized by PIL (bilinear) to ``side`` x ``side`` when it is another size, scaled to [0, 1] and
    normalised as ``config`` says."""
    import onnxruntime as ort

    picture = Image.open(io.BytesIO(png)).convert("RGB")
    if picture.size != (side, side):
        picture = picture.resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, dtype=np.float32) / 255
    x = tiny_cnn.normalised(torch.from_numpy(pixels).permute(2, 0, 1)[None]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": x})[0][0]
    return labels[int(np.argmax(logits))]
