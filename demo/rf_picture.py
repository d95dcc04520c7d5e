"""Draws docs/images/efficientnet_b0_local_field.png: the local receptive fields of efficientnet_b0 (an SE
network) on a seed photo, with the effective field of the centre unit.

    .venv/bin/python demo/rf_picture.py
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from nnprobe_services.vision.receptive_fields import empirical as rf_empirical
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields import plot as rf_plot
from nnprobe_services.vision.receptive_fields.boxes import unit_field

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "seed-images" / "n01674464_3490_lizard.jpg"
TARGET = ROOT / "docs" / "images" / "efficientnet_b0_local_field.png"
SIZE = (224, 224)
HALF = Fraction(1, 2)


def main() -> None:
    cpu = torch.device("cpu")
    graph = rf_graph.analyse_model("efficientnet_b0", SIZE, HALF, None)
    end = graph.fields[-1]
    units = [unit_field(graph.fields, end.name, x, y, SIZE, HALF) for x, y in ((3, 3), (0, 0), (6, 2))]
    probe, channels = rf_empirical.model_probe(
        "efficientnet_b0", [end.name], cpu, weights="random", seed=0, input_size=SIZE
    )
    grad = rf_empirical.gradient_map(probe, channels, SIZE, cpu, (end.name, 3, 3), 16, 0, lambda: False)
    image = None
    if PHOTO.exists():
        from PIL import Image

        with Image.open(PHOTO) as photo:
            image = np.asarray(photo.convert("RGB").resize(SIZE[::-1]))
    png = rf_plot.render(
        SIZE,
        0.5,
        units,
        image=image,
        gradient_map=grad,
        gradient_unit=units[0],
        title=f"efficientnet_b0: local fields, r = {end.height.receptive}",
        should_stop=lambda: False,
    )
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(png)
    print(TARGET)


if __name__ == "__main__":
    main()
