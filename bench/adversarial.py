"""Benchmark: adversarial attacks through the service against torchattacks in-process, and success rates.

    .venv/bin/python bench/adversarial.py [--photos 5] [--repeats 3] [--rate-steps 10] [--no-rates]

1. Time per image of targeted PGD (L-inf, eps 4/255, step 1/255, random start, no early stop) at 10 and 40
   steps on the seed photos, side by side on the same photos, model and steps: through the service
   (``GenerateAdversarial``, one request for all photos: decoding, the originals' top-k, the attack, the
   8-bit results judged and encoded as PNG, gRPC) and through torchattacks in-process on the decoded pixels.
   Each round times both, in alternating order; the table shows the medians over ``--repeats`` rounds and
   the median of the rounds' ratios (service / torchattacks), in wall-clock time and in this process's CPU
   time (which load from other processes disturbs less).
2. Untargeted success rates (judged on the 8-bit image) of every method at eps 2/255, 4/255 and 8/255
   (CW-L2 has no budget: one row).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.server.device import resolve_device
from nnprobe_services.vision import attacks, images, models, preprocess, store

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
TARGET = 15


def _timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of ``run``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds per step count (medians)")
    parser.add_argument("--rate-steps", type=int, default=10, help="iterations of the success-rate runs")
    parser.add_argument("--no-rates", action="store_true", help="time PGD only")
    args = parser.parse_args(argv)
    import torchattacks

    device = resolve_device("auto")
    files = sorted(SEED_DIR.glob("*.jpg"))[: args.photos]
    model = store.ModelStore(device).get(models.DEFAULT_MODEL)
    limits = preprocess.ImageLimits(1 << 26, 1 << 27)
    inputs = [images.ImageInput(f.read_bytes(), None, "image", f.name) for f in files]
    pixels = attacks.quantize(
        images.model_inputs(inputs, model.record.preprocessing, limits, skip_resize=False)
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

                def service(steps: int = steps) -> object:
                    return client.attack(
                        files,
                        target=TARGET,
                        eps="4/255",
                        step_size="1/255",
                        steps=steps,
                        early_stop=False,
                        seed=0,
                    )

                def reference(steps: int = steps) -> object:
                    attack = torchattacks.PGD(
                        model.module, eps=4 / 255, alpha=1 / 255, steps=steps, random_start=True
                    )
                    attack.set_mode_targeted_by_label(quiet=True)
                    return attack(pixels, targets)

                ours, theirs = [], []
                for round_ in range(args.repeats):
                    if round_ % 2:
                        theirs.append(_timed(reference, device))
                        ours.append(_timed(service, device))
                    else:
                        ours.append(_timed(service, device))
                        theirs.append(_timed(reference, device))
                per_image = [
                    statistics.median(t[k] for t in times) / len(files)
                    for times in (ours, theirs)
                    for k in (0, 1)
                ]
                wall_ratio = statistics.median(o[0] / t[0] for o, t in zip(ours, theirs, strict=True))
                cpu_ratio = statistics.median(o[1] / t[1] for o, t in zip(ours, theirs, strict=True))
                rows.append(
                    (
                        f"PGD {steps} steps",
                        f"{per_image[0]:.3f}",
                        f"{per_image[2]:.3f}",
                        f"{wall_ratio:.2f}",
                        f"{per_image[1]:.3f}",
                        f"{per_image[3]:.3f}",
                        f"{cpu_ratio:.2f}",
                    )
                )
            threads = torch.get_num_threads()
            print(
                f"{models.DEFAULT_MODEL} on {device} ({threads} threads), {len(files)} photos, "
                f"medians of {args.repeats} rounds"
            )
            print_table(
                rows,
                [
                    "attack",
                    "service s/image",
                    "torchattacks s/image",
                    "ratio",
                    "service CPU s/image",
                    "torchattacks CPU s/image",
                    "CPU ratio",
                ],
            )
            if args.no_rates:
                return
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
