"""``nnprobe attack``: adversarial examples that survive being saved (VisionService.GenerateAdversarial)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from nnprobe.cli.output import ProgressBar, add_client_options, client_kwargs, print_json, print_table
from nnprobe.cli.parsing import INT_MAX, UsageError, fraction, limit
from nnprobe.progress import Progress
from nnprobe.vision import ATTACK_METHODS, AdversarialResult, AttackProgress, TransferResult, VisionClient


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("attack", help="adversarial examples (VisionService.GenerateAdversarial)")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target", help="target class index or label (targeted attack)")
    goal.add_argument("--untargeted", action="store_true", help="move away from the original class")
    p.add_argument("--method", choices=ATTACK_METHODS, default="pgd")
    p.add_argument("--norm", choices=("linf", "l2"))
    p.add_argument(
        "--eps", type=pixel_budget, help="budget in (0, 1] pixel units, e.g. 4/255 (default 8/255)"
    )
    p.add_argument("--step-size", type=pixel_budget, help="step in (0, 1] pixel units (default eps/4)")
    limit(
        p.add_argument(
            "--steps",
            type=int,
            help="iterations, 1..the server's limit (1000 by default; default 10, FGSM 1, CW 100)",
        ),
        low=1,
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-random-start", action="store_true", help="PGD: start at the image")
    p.add_argument("--no-early-stop", action="store_true", help="run every iteration")
    p.add_argument("--refine-steps", type=int, default=0, help="8-bit lattice steps after rounding")
    limit(p.add_argument("--lr", type=float, help="Adam's learning rate (adam, cw_l2)"), low_open=True)
    p.add_argument("--model", help="model attacked (default: the server's default)")
    p.add_argument("--model-version", type=int, default=0, help="repository version (default: the model's)")
    p.add_argument(
        "--transfer-model",
        action="append",
        default=[],
        type=_transfer_model,
        metavar="NAME[:VERSION]",
        help="another local model to check (a repository version after a colon)",
    )
    p.add_argument("--transfer-address", action="append", default=[], help="another VisionService to check")
    p.add_argument(
        "--save-dir",
        type=Path,
        help="write original | perturbation | adversarial PNGs here (needs: pip install 'nnprobe[images]')",
    )
    add_client_options(p, "vision")
    p.set_defaults(handler=run_attack, needs=lambda args: ("images",) if args.save_dir else ())


def pixel_budget(text: str) -> float:
    """``4/255`` or ``0.0157``: a budget in (0, 1] pixel units. A whole number above 1 is almost surely
    meant in 8-bit steps (``8`` for ``8/255``), so it is refused with that suggestion."""
    value = fraction(text)
    if value > 1:
        hint = f"; did you mean {text.strip()}/255?" if "/" not in text else ""
        raise argparse.ArgumentTypeError(f"{text} is above 1: budgets are in (0, 1] pixel units{hint}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0: budgets are in (0, 1] pixel units")
    return value


def _transfer_model(text: str) -> tuple[str, int]:
    """``NAME[:VERSION]`` -> (name, version); version 0 (the model's default) when none is named."""
    name, colon, version = text.rpartition(":")
    if not colon:
        return text, 0
    if not (version.isascii() and version.isdigit() and int(version) <= INT_MAX) or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:VERSION with a version number")
    return name, int(version)


def _transfer_models(given: list[tuple[str, int]]) -> dict[str, list]:
    """``--transfer-model`` values as the SDK's ``transfer_models`` and ``transfer_model_versions`` (empty
    when no version is named)."""
    versions = [version for _, version in given]
    return {
        "transfer_models": [name for name, _ in given],
        "transfer_model_versions": versions if any(versions) else [],
    }


def run_attack(args: argparse.Namespace) -> int:
    for image in args.images:
        if not Path(image).is_file():
            raise UsageError(f"image not found: {image}")
    results = _attack(args)
    saved = _save_triptychs(results, args.save_dir) if args.save_dir is not None else []
    if args.json:
        data = [
            {
                k: v
                for k, v in vars(r).items()
                if k not in ("raw", "original_png", "adversarial_png", "perturbation")
            }
            for r in results
        ]
        print_json({"results": data, "saved": saved}, out=sys.stdout)
        return 0
    _print_results(results)
    for path in saved:
        print(f"saved {path}")
    return 0


def _attack_options(args: argparse.Namespace) -> dict:
    """The command's flags as keyword arguments of ``VisionClient.attack``."""
    return {
        "target": args.target,
        "untargeted": args.untargeted,
        "method": args.method,
        "norm": args.norm,
        "eps": args.eps,
        "step_size": args.step_size,
        "steps": args.steps or 0,
        "seed": args.seed,
        "random_start": False if args.no_random_start else None,
        "early_stop": False if args.no_early_stop else None,
        "refine_steps": args.refine_steps,
        "learning_rate": args.lr,
        "model": args.model,
        "model_version": args.model_version,
        **_transfer_models(args.transfer_model),
        "transfer_addresses": args.transfer_address,
    }


def _attack(args: argparse.Namespace) -> list[AdversarialResult]:
    """Run the attack with a progress bar on stderr over every image's iterations."""
    total = args.steps or {"fgsm": 1, "cw_l2": 100}.get(args.method, 10)
    bar = ProgressBar(total * len(args.images), f"{args.method} attack", out=sys.stderr)
    done: dict[int, int] = {}

    def progress(update: Progress) -> None:
        event = update.detail
        if not isinstance(event, AttackProgress):
            return
        done[event.image] = event.iteration
        bar.update(
            sum(done.values()),
            f"image {event.image}: top-1 {event.top1.label} p(goal) {event.goal_probability:.3f}",
        )

    with VisionClient(args.address, **client_kwargs(args)) as client:
        try:
            return client.attack(args.images, on_progress=progress, progress=False, **_attack_options(args))
        finally:
            bar.close()


def _save_triptychs(results: list[AdversarialResult], save_dir: Path) -> list[str]:
    """Write each result's original | perturbation | adversarial picture; return the paths written."""
    save_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for result in results:
        path = save_dir / f"{Path(result.name or str(result.image)).stem}-adversarial.png"
        path.write_bytes(triptych(result.original_png, result.perturbation, result.adversarial_png))
        saved.append(str(path))
    return saved


def _print_results(results: list[AdversarialResult]) -> None:
    """One row per image, then a line per transfer check."""
    print_table(
        [
            (
                r.name,
                f"{r.original_top[0].label} ({r.original_top[0].probability:.3f})",
                f"{r.final_top[0].label} ({r.final_top[0].probability:.3f})",
                r.success,
                r.iterations,
                f"{r.linf * 255:.0f}/255",
                f"{r.l2:.3f}",
                r.l0,
            )
            for r in results
        ],
        ["image", "original", "adversarial (8-bit)", "success", "iterations", "L-inf", "L2", "L0"],
        out=sys.stdout,
    )
    for r in results:
        for t in r.transfers:
            print(f"transfer {r.name} -> {transfer_line(t)}")


def transfer_line(t: TransferResult) -> str:
    """One transfer check: the model, its version and where it runs, its top-1 on the original and on the
    adversarial image, and its verdict ("not applicable" with the reason), or the error."""
    version = f" v{t.model_version}" if t.model_version else ""
    sha = f" sha256 {t.weights_sha256[:12]}" if t.weights_sha256 else ""
    head = f"{t.model or '?'}{version} ({t.address or 'local'}{sha})"
    if t.error:
        return f"{head}: {t.error}"
    before = t.original_top1.label if t.original_top1 else "?"
    after = t.top1.label if t.top1 else "?"
    verdict = t.verdict + (f" ({t.note})" if t.note else "")
    return f"{head}: {before} -> {after}: {verdict}"


def triptych(original_png: bytes, perturbation: np.ndarray, adversarial_png: bytes) -> bytes:
    """original | perturbation (amplified to the full range) | adversarial, side by side, as PNG."""
    from PIL import Image

    original = Image.open(io.BytesIO(original_png)).convert("RGB")
    adversarial = Image.open(io.BytesIO(adversarial_png)).convert("RGB")
    peak = float(np.abs(perturbation).max()) or 1.0
    amplified = np.clip(np.rint((perturbation / peak * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)
    width, height = original.size
    canvas = Image.new("RGB", (3 * width + 8, height), (255, 255, 255))
    canvas.paste(original, (0, 0))
    canvas.paste(Image.fromarray(amplified), (width + 4, 0))
    canvas.paste(adversarial, (2 * width + 8, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
