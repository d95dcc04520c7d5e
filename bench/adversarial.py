"""Benchmark: adversarial attacks through the service against torchattacks in-process, and success rates.

    .venv/bin/python bench/adversarial.py [--photos 5] [--rate-steps 10]

1. Time per image of targeted PGD (L-inf, eps 4/255, step 1/255, random start, no early stop) at 10 and 40
   steps on the seed photos: through the service (``GenerateAdversarial``, one request for all photos) and
   through torchattacks in-process on the same model and inputs. Ratio: service / torchattacks.
2. Untargeted success rates (judged on the 8-bit image) of every method at eps 2/255, 4/255 and 8/255
   (CW-L2 has no budget: one row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.server.device import resolve_device
from nnprobe_services.vision import attacks, models, preprocess, store

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
TARGET = 15


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--rate-steps", type=int, default=10, help="iterations of the success-rate runs")
    args = parser.parse_args(argv)
    import torchattacks

    device = resolve_device("auto")
    files = sorted(SEED_DIR.glob("*.jpg"))[: args.photos]
    model = store.ModelStore(device).get(models.DEFAULT_MODEL)
    pixels = attacks.quantize(
        torch.stack(
            [
                preprocess.model_input(
                    preprocess.decode(f.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 27),
                    model.record.preprocessing,
                )
                for f in files
            ]
        )
    ).to(device)
    targets = torch.full((len(files),), TARGET, device=device)
    config = ServerConfig(service="vision", host="127.0.0.1", port=0, device=str(device)).validate()
    server, port = create_server(config)
    server.start()
    rows = []
    try:
        with VisionClient(f"127.0.0.1:{port}", timeout=3600) as client:
            # Warm both paths up (model loading, first backward passes) outside the timings.
            client.attack(files, target=TARGET, eps="4/255", steps=1, early_stop=False)
            warm = torchattacks.PGD(model.module, eps=4 / 255, alpha=1 / 255, steps=1, random_start=True)
            warm.set_mode_targeted_by_label(quiet=True)
            warm(pixels, targets)
            for steps in (10, 40):
                start = time.perf_counter()
                client.attack(
                    files,
                    target=TARGET,
                    eps="4/255",
                    step_size="1/255",
                    steps=steps,
                    early_stop=False,
                    seed=0,
                )
                service = (time.perf_counter() - start) / len(files)
                attack = torchattacks.PGD(
                    model.module, eps=4 / 255, alpha=1 / 255, steps=steps, random_start=True
                )
                attack.set_mode_targeted_by_label(quiet=True)
                start = time.perf_counter()
                attack(pixels, targets)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                reference = (time.perf_counter() - start) / len(files)
                rows.append(
                    (f"PGD {steps} steps", f"{service:.2f}", f"{reference:.2f}", f"{service / reference:.2f}")
                )
            print(f"{models.DEFAULT_MODEL} on {device}, {len(files)} photos")
            print_table(rows, ["attack", "service s/image", "torchattacks s/image", "ratio"])
            print()
            rates = []
            for method in attacks.METHODS:
                budgets = [None] if method == "cw_l2" else ["2/255", "4/255", "8/255"]
                for eps in budgets:
                    steps = 1 if method == "fgsm" else args.rate_steps
                    results = client.attack(files, untargeted=True, method=method, eps=eps, steps=steps)
                    wins = sum(r.success for r in results)
                    rates.append((method, eps or "-", steps, f"{wins}/{len(results)}"))
            print(f"untargeted success on the 8-bit images ({args.rate_steps} iterations, FGSM 1)")
            print_table(rates, ["method", "eps", "steps", "success"])
    finally:
        server.shutdown(0).wait()


if __name__ == "__main__":
    main()
