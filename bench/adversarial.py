"""Benchmark: adversarial attacks through the service against torchattacks in-process, and success rates.

    .venv/bin/python bench/adversarial.py [--photos 5] [--repeats 5] [--rate-steps 10] [--no-rates]

1. Time per image of targeted PGD (L-inf, eps 4/255, step 1/255, random start, no early stop) at 10 and 40
   steps on the seed photos, side by side on the same photos, weights and steps: through the service
   (``GenerateAdversarial``, one request for all photos: decoding, the originals' top-k, the attack, the
   8-bit results judged and encoded as PNG, gRPC) and through torchattacks in-process on the decoded pixels,
   (a) on the network as timm builds it (NCHW memory format: what a user hands torchattacks) and (b) on a
   ``channels_last`` copy (the format the service keeps its CPU models in). Each round times the three in
   rotating order; the table shows the medians over ``--repeats`` rounds and the medians of the rounds'
   ratios (service / torchattacks) in wall-clock time and in this process's CPU time (which load from other
   processes disturbs less). Then where the service's time goes: the fixed part per image (the 10-step
   time less ten steps) and the cost per step, from the two step counts.
2. Untargeted success rates (judged on the 8-bit image) of every method at eps 2/255, 4/255 and 8/255
   (CW-L2 has no budget: one row).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.device import resolve_device
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.vision.attacks import methods as attacks
from nnprobe_services.vision.images import decode as images
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import registry as models
from nnprobe_services.vision.models import store

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
TARGET = 15
STEPS = (10, 40)


def _timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of ``run``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def _rounds(paths: list[Callable[[], object]], repeats: int, device: torch.device) -> list[list[tuple]]:
    """``repeats`` rounds of every path, the order rotated each round; (wall, CPU) per path and round."""
    times: list[list[tuple]] = [[] for _ in paths]
    for round_ in range(repeats):
        for k in range(len(paths)):
            which = (k + round_) % len(paths)
            times[which].append(_timed(paths[which], device))
    return times


def _ratio(ours: list[tuple], theirs: list[tuple], k: int) -> float:
    return statistics.median(o[k] / t[k] for o, t in zip(ours, theirs, strict=True))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds per step count (medians)")
    parser.add_argument("--rate-steps", type=int, default=10, help="iterations of the success-rate runs")
    parser.add_argument("--no-rates", action="store_true", help="time PGD only")
    return parser.parse_args(argv)


def _photo_pixels(files: list[Path], loaded, device: torch.device) -> torch.Tensor:
    """The photos as the model sees them (decoded, preprocessed, on the 8-bit lattice), on ``device``."""
    limits = preprocess.ImageLimits(1 << 26, 1 << 27)
    inputs = [images.ImageInput(f.read_bytes(), None, "image", f.name) for f in files]
    return attacks.quantize(
        images.model_inputs(inputs, loaded.record.preprocessing, limits, skip_resize=False)
    ).to(device)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    import torchattacks

    device = resolve_device("auto")
    files = sorted(SEED_DIR.glob("*.jpg"))[: args.photos]
    loaded = store.ModelStore(device).get(models.DEFAULT_MODEL)
    as_built = models.load_module(loaded.record, loaded.path, device)  # NCHW, as timm builds it
    nhwc = copy.deepcopy(as_built).to(memory_format=torch.channels_last)
    pixels = _photo_pixels(files, loaded, device)
    targets = torch.full((len(files),), TARGET, device=device)
    config = ServerConfig(service="vision", host="127.0.0.1", port=0, device=str(device)).validate()
    server, port = create_server(config)
    server.start()
    try:
        with VisionClient(f"127.0.0.1:{port}", timeout=3600) as client:

            def service(steps: int) -> object:
                return client.attack(
                    files,
                    target=TARGET,
                    eps="4/255",
                    step_size="1/255",
                    steps=steps,
                    early_stop=False,
                    seed=0,
                )

            def reference(module: torch.nn.Module, steps: int) -> object:
                attack = torchattacks.PGD(module, eps=4 / 255, alpha=1 / 255, steps=steps, random_start=True)
                attack.set_mode_targeted_by_label(quiet=True)
                return attack(pixels, targets)

            # Warm every path up (model loading, first backward passes) outside the timings.
            service(1)
            reference(as_built, 1)
            reference(nhwc, 1)
            paths: dict[int, list[Callable[[], object]]] = {
                steps: [
                    functools.partial(service, steps),
                    functools.partial(reference, as_built, steps),
                    functools.partial(reference, nhwc, steps),
                ]
                for steps in STEPS
            }
            _time_pgd(paths, len(files), args.repeats, device)
            if args.no_rates:
                return
            print()
            _print_success_rates(client, files, args.rate_steps)
    finally:
        server.shutdown(0).wait()


def _time_pgd(
    paths: dict[int, list[Callable[[], object]]], photos: int, repeats: int, device: torch.device
) -> None:
    """Time the three paths (service, torchattacks as built, torchattacks channels_last) at each step
    count; print the per-image medians and ratios, then the fixed part and the cost per step."""
    rows, slopes = [], {}
    for steps, attacks_at_steps in paths.items():
        ours, built, last = _rounds(attacks_at_steps, repeats, device)
        per_image = [statistics.median(t[0] for t in times) / photos for times in (ours, built, last)]
        slopes[steps] = per_image
        rows.append(
            (
                f"PGD {steps} steps",
                f"{per_image[0]:.3f}",
                f"{per_image[1]:.3f}",
                f"{_ratio(ours, built, 0):.2f}",
                f"{_ratio(ours, built, 1):.2f}",
                f"{per_image[2]:.3f}",
                f"{_ratio(ours, last, 0):.2f}",
            )
        )
    threads = torch.get_num_threads()
    print(
        f"{models.DEFAULT_MODEL} on {device} ({threads} threads), {photos} photos, "
        f"medians of {repeats} rounds"
    )
    print_table(
        rows,
        [
            "attack",
            "service s/image",
            "(a) torchattacks s/image",
            "ratio (a)",
            "CPU ratio (a)",
            "(b) torchattacks channels_last",
            "ratio (b)",
        ],
    )
    _print_breakdown(slopes)


def _print_breakdown(slopes: dict[int, list[float]]) -> None:
    """Per path: the fixed time per image and the time per step, from the two step counts."""
    short, long = STEPS
    step_cost = [(slopes[long][k] - slopes[short][k]) / (long - short) for k in range(3)]
    fixed = [slopes[short][k] - short * step_cost[k] for k in range(3)]
    print()
    print("where the time goes (s per image; from the two step counts)")
    print_table(
        [
            (name, f"{fixed[k]:.3f}", f"{step_cost[k]:.4f}")
            for k, name in enumerate(["service", "(a) torchattacks", "(b) torchattacks channels_last"])
        ],
        ["path", "fixed part", "per step"],
    )


def _print_success_rates(client: VisionClient, files: list[Path], rate_steps: int) -> None:
    """Untargeted success of every method at each budget (CW-L2: none), judged on the 8-bit images."""
    rates = []
    for method in attacks.METHODS:
        budgets = [None] if method == "cw_l2" else ["2/255", "4/255", "8/255"]
        for eps in budgets:
            steps = 1 if method == "fgsm" else rate_steps
            results = client.attack(files, untargeted=True, method=method, eps=eps, steps=steps)
            wins = sum(r.success for r in results)
            rates.append((method, eps or "-", steps, f"{wins}/{len(results)}"))
    print(f"untargeted success on the 8-bit images ({rate_steps} iterations, FGSM 1)")
    print_table(rates, ["method", "eps", "steps", "success"])


if __name__ == "__main__":
    main()
