"""Demo section: ImageNet classification of the notebook's five photos (section 1.B), plus a cat."""

from __future__ import annotations

import json
from pathlib import Path

from nnprobe import VisionClient
from nnprobe.cli.output import print_table

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
#: (file, the notebook's ground truth) in the notebook's order.
PHOTOS = [
    ("n01726692_4802_snake.jpg", "snake.jpg"),
    ("n01674464_3490_lizard.jpg", "lizard.jpg"),
    ("n01770393_12410_scorpion.jpg", "scorpion.jpg"),
    ("n02129165_2762_lion.jpg", "lion.jpg"),
    ("n02129604_20374_tiger.jpg", "tiger.jpg"),
]


def run(address: str, out_dir: Path) -> None:
    if not SEED_DIR.is_dir():
        print(f"skipped: the seed photos are not at {SEED_DIR}")
        return
    from skimage.data import chelsea

    out_dir.mkdir(parents=True, exist_ok=True)
    with VisionClient(address, timeout=300) as client:
        models = client.list_models()
        default = next(m for m in models if m.is_default)
        print(f"Models served ({len(models)}); default {default.name}, sha256 {default.version[:16]}")
        print_table(
            [(m.name, m.architecture, "yes" if m.weights_present else "no") for m in models],
            ["model", "architecture", "weights present"],
        )
        images = [SEED_DIR / name for name, _ in PHOTOS] + [chelsea()]
        names = [truth for _, truth in PHOTOS] + ["chelsea (skimage)"]
        result = client.classify(images, top_k=3, names=names)
    print()
    print("The notebook's five photos (AlexNet there; the offline default model here), plus a cat:")
    print_table(
        [
            (
                r.name,
                r.index,
                r.label,
                f"{r.probability:.4f}",
                f"{r.top[1].label} ({r.top[1].probability:.3f})",
            )
            for r in result
        ],
        ["ground truth", "class", "predicted", "probability", "runner-up"],
    )
    (out_dir / "classification.json").write_text(
        json.dumps(
            {
                "model": result.model,
                "model_version": result.model_version,
                "results": [
                    {"image": r.name, "top": [[c.index, c.label, c.probability] for c in r.top]}
                    for r in result
                ],
            },
            indent=2,
        )
    )
