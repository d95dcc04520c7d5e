"""Demo section: adversarial examples (the notebook's section 1.C) done right: targeted PGD towards classes
5, 10 and 15 for the five photos, judged after saving as 8-bit PNG, shown as one 5 x 3 grid."""

from __future__ import annotations

import io
from pathlib import Path

from nnprobe import VisionClient
from nnprobe.cli.output import print_table

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
PHOTOS = [
    ("n01726692_4802_snake.jpg", "snake"),
    ("n01674464_3490_lizard.jpg", "lizard"),
    ("n01770393_12410_scorpion.jpg", "scorpion"),
    ("n02129165_2762_lion.jpg", "lion"),
    ("n02129604_20374_tiger.jpg", "tiger"),
]
TARGETS = (5, 10, 15)


def run(address: str, out_dir: Path) -> None:
    if not SEED_DIR.is_dir():
        print(f"skipped: the seed photos are not at {SEED_DIR}")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [SEED_DIR / name for name, _ in PHOTOS]
    names = [short for _, short in PHOTOS]
    grid: dict[tuple[str, int], object] = {}
    with VisionClient(address, timeout=900) as client:
        for target in TARGETS:
            results = client.attack(
                files, target=target, method="pgd", eps="4/255", step_size="1.5/255", steps=8, names=names
            )
            for r in results:
                grid[(r.name, target)] = r
    print("Targeted PGD, L-inf eps 4/255, step 1.5/255, at most 8 steps; judged on the saved 8-bit PNG")
    print_table(
        [
            (
                name,
                grid[(name, TARGETS[0])].original_top[0].label,  # type: ignore[attr-defined]
                *(
                    f"{r.final_top[0].label} {r.final_top[0].probability:.2f} "  # type: ignore[attr-defined]
                    f"{'ok' if r.success else 'MISS'} ({r.iterations} it)"  # type: ignore[attr-defined]
                    for r in (grid[(name, t)] for t in TARGETS)
                ),
            )
            for name in names
        ],
        ["photo", "original", *(f"target {t}" for t in TARGETS)],
    )
    wins = sum(r.success for r in grid.values())  # type: ignore[attr-defined]
    print(f"{wins} of {len(grid)} pairs succeed after quantization")
    path = out_dir / "adversarial_grid.png"
    path.write_bytes(_grid_png(grid, names))
    print(f"picture: {path}")


def _grid_png(grid, names) -> bytes:
    from PIL import Image, ImageDraw

    size, label = 224, 18
    canvas = Image.new("RGB", (size * (len(TARGETS) + 1), (size + label) * len(names)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        top = row * (size + label)
        first = grid[(name, TARGETS[0])]
        canvas.paste(Image.open(io.BytesIO(first.original_png)), (0, top + label))
        draw.text((4, top + 2), f"{name}: {first.original_top[0].label}", fill="black")
        for column, target in enumerate(TARGETS, 1):
            r = grid[(name, target)]
            canvas.paste(Image.open(io.BytesIO(r.adversarial_png)), (column * size, top + label))
            text = f"-> {target}: {r.final_top[0].label} {r.final_top[0].probability:.2f}"
            draw.text((column * size + 4, top + 2), text, fill="black" if r.success else "red")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
