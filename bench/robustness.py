"""Benchmark: the standard robustness ensemble through the service against torchattacks AutoAttack in-process.

    .venv/bin/python bench/robustness.py [--images 8] [--eps 1/255 4/255] [--steps 10] [--queries 1000]

The full-size comparison (AutoAttack's standard budgets: 100 steps, 5000 Square queries; about an hour on
two CPU cores):

    .venv/bin/python bench/robustness.py --images 32 --steps 100 --queries 5000

On the same images (the seed photos and scikit-image's photos, cycled to ``--images``; each labelled with the
default model's own clean top-1, so clean accuracy is 100%), per L∞ ε, side by side: (a) an
``EvaluateRobustness`` job with ``attacks="standard"`` (APGD-CE, APGD-T, FAB-T, Square, each later attack on
the images still robust) through the SDK against an in-process server, timed from the request to
``result()`` (the data set is uploaded once beforehand, not timed), and (b) ``torchattacks.AutoAttack``
(version "standard") in-process on the default model's PyTorch module as ``load_module`` builds it (NCHW,
normalisation inside), on the decoded, 8-bit pixels the service attacks. Both run ``--steps`` iterations per
gradient attack, ``--queries`` Square queries per image, 9 target classes for APGD-T and FAB-T (AutoAttack's
standard; torchattacks' own default is every other class) and one restart. Each row: the seconds of each, the
ratio service / torchattacks (median over ``--repeats`` rounds, the order alternated), the robust accuracy of
each (the service judges the saved 8-bit image, torchattacks its floating-point one), how many images each
attack of the service broke and Square's queries per image it attacked (from the service's result). Both
sides warm up (model load, first passes) first.

A second table runs Square alone (black-box, no gradients) at one ε (``--square-eps``, default the last of
``--eps``) with ``--queries`` queries and one restart: an ``EvaluateRobustness`` job with
``attacks=["square"]`` against ``torchattacks.Square`` (margin loss, p_init 0.8, seed 0) on the same module
and pixels. Besides times and robust accuracies it gives the queries per image, mean and median over the
images: the service's from each image's ``queries`` in the result, torchattacks' from the per-image counts
its ``attack_single_run`` returns (``forward`` drops them). Both count the initial point as one query, so
torchattacks gets ``queries - 1`` iterations: the same budget of ``--queries`` model calls per image.
"""

from __future__ import annotations

import argparse
import collections
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe.vision.adversarial import parse_epsilon
from nnprobe_services.device import resolve_device
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.vision.attacks import methods as attacks
from nnprobe_services.vision.images import decode as images
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import registry as models
from nnprobe_services.vision.models import store
from PIL import Image

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
#: Target classes of APGD-T and FAB-T in AutoAttack's standard version.
TARGETS = 9


def load_images(count: int) -> list[bytes]:
    """``count`` encoded photos: the seed JPEGs, then four scikit-image photos as JPEG, cycled."""
    from skimage import data

    encoded = [p.read_bytes() for p in sorted(SEED_DIR.glob("*.jpg"))]
    for photo in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut()):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--eps", nargs="+", default=["1/255", "4/255"], help="L-inf budgets (increasing)")
    parser.add_argument("--steps", type=int, default=10, help="gradient attack iterations (standard: 100)")
    parser.add_argument("--queries", type=int, default=1000, help="Square queries per image (standard: 5000)")
    parser.add_argument("--repeats", type=int, default=1, help="timing rounds per eps (medians)")
    parser.add_argument(
        "--square-eps", default=None, help="L-inf budget of Square alone (default: last --eps)"
    )
    return parser.parse_args(argv)


def _pixels(encoded: list[bytes], loaded: models.LoadedModel, device: torch.device) -> torch.Tensor:
    """The images as the model sees them (decoded and preprocessed as Classify does, on the 8-bit lattice)."""
    limits = preprocess.ImageLimits(1 << 26, 1 << 27)
    inputs = [images.ImageInput(data, None, f"images[{i}]", str(i)) for i, data in enumerate(encoded)]
    pixels = images.model_inputs(inputs, loaded.record.preprocessing, limits, skip_resize=False)
    return attacks.quantize(pixels).to(device)


def _autoattack(module: torch.nn.Module, eps: float, steps: int, queries: int):
    """torchattacks' standard AutoAttack with the service's budgets: ``steps`` per gradient attack, 9 target
    classes, ``queries`` Square queries, one restart each."""
    import torchattacks

    attack = torchattacks.AutoAttack(module, norm="Linf", eps=eps, version="standard", n_classes=1000, seed=0)
    apgd, apgdt, fab, square = attack._autoattack.attacks
    for gradient_attack in (apgd, apgdt, fab):
        gradient_attack.steps = steps
    apgdt.n_target_classes = fab.n_target_classes = TARGETS
    square.n_queries = queries
    return attack


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    device = resolve_device("auto")
    encoded = load_images(args.images)
    loaded = store.ModelStore(device).get(models.DEFAULT_MODEL)
    module = models.load_module(loaded.record, loaded.path, device)  # NCHW, as a user hands torchattacks
    pixels = _pixels(encoded, loaded, device)
    with torch.no_grad():
        labels = module(pixels).argmax(1)
    epsilons = [parse_epsilon(eps) for eps in args.eps]
    with tempfile.TemporaryDirectory() as folder:
        config = ServerConfig(
            service="vision", host="127.0.0.1", port=0, device=str(device), data_dir=folder
        ).validate()
        server, port = create_server(config)
        server.start()
        try:
            with VisionClient(f"127.0.0.1:{port}", timeout=3600) as client:
                client.upload_dataset("bench", encoded, [str(label) for label in labels.tolist()])
                rows = _compare(client, module, pixels, labels, epsilons, args)
                square_eps = parse_epsilon(args.square_eps or args.eps[-1])
                square_row = _square_alone(client, module, pixels, labels, square_eps, args.queries)
        finally:
            server.shutdown(0).wait()
    print(
        f"{models.DEFAULT_MODEL} on {device} ({torch.get_num_threads()} threads), {args.images} images, "
        f"{args.steps} steps, {args.queries} Square queries, medians of {args.repeats} rounds"
    )
    print_table(
        rows,
        [
            "eps",
            "service s",
            "torchattacks s",
            "ratio",
            "service robust",
            "torchattacks robust",
            "service broken by",
            "Square queries/image",
        ],
    )
    print(f"\nSquare alone (black-box), {args.queries} queries per image, one restart, one round")
    print_table(
        [square_row],
        [
            "eps",
            "service s",
            "torchattacks s",
            "ratio",
            "service robust",
            "torchattacks robust",
            "service queries/image (mean, median)",
            "torchattacks queries/image (mean, median)",
        ],
    )


def _compare(client: VisionClient, module, pixels, labels, epsilons: list[float], args) -> list[tuple]:
    """Warm both sides up, then per ε time the service job and torchattacks; one table row per ε."""

    def service(eps: float, steps: int, queries: int):
        job = client.evaluate_robustness(
            models.DEFAULT_MODEL, "bench", eps=[eps], attacks="standard", steps=steps, max_queries=queries
        )
        return job.result()

    def reference(eps: float, steps: int, queries: int) -> int:
        adversarial = _autoattack(module, eps, steps, queries)(pixels, labels)
        with torch.no_grad():
            return int((module(adversarial).argmax(1) == labels).sum())

    service(epsilons[0], 1, 10)
    reference(epsilons[0], 1, 10)
    rows = []
    for eps in epsilons:
        ours: list[float] = []
        theirs: list[float] = []
        for round_ in range(args.repeats):
            order = [(service, ours), (reference, theirs)]
            for run, times in order if round_ % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                outcome = run(eps, args.steps, args.queries)
                times.append(time.perf_counter() - start)
                if run is service:
                    result = outcome
                else:
                    their_robust = outcome
        queries = [image.queries[0] for image in result.images if image.queries[0]]
        broken_by = collections.Counter(image.broken_by[0] for image in result.images if image.broken_by[0])
        rows.append(
            (
                f"{eps * 255:g}/255",
                f"{statistics.median(ours):.1f}",
                f"{statistics.median(theirs):.1f}",
                f"{statistics.median(o / t for o, t in zip(ours, theirs, strict=True)):.2f}",
                f"{result.per_epsilon[0].robust}/{result.total}",
                f"{their_robust}/{len(labels)}",
                ", ".join(f"{name} {count}" for name, count in broken_by.items()) or "-",
                f"{statistics.mean(queries):.0f} ({len(queries)} images)" if queries else "- (none left)",
            )
        )
    return rows


def _square_alone(client: VisionClient, module, pixels, labels, eps: float, queries: int) -> tuple:
    """Square alone at ``eps`` through the service and in torchattacks (timed once each); one table row with
    the robust accuracies and the queries per image of each."""
    import torchattacks

    start = time.perf_counter()
    job = client.evaluate_robustness(
        models.DEFAULT_MODEL, "bench", eps=[eps], attacks=["square"], max_queries=queries, seed=0
    )
    result = job.result()
    ours = time.perf_counter() - start
    service_queries = [image.queries[0] for image in result.images if image.queries[0]]

    start = time.perf_counter()
    # torchattacks' n_queries counts iterations after the initial point: queries - 1 gives the same budget.
    square = torchattacks.Square(module, norm="Linf", eps=eps, n_queries=queries - 1, n_restarts=1, seed=0)
    square.init_hyperparam(pixels)
    torch.random.manual_seed(square.seed)
    counts, adversarial = square.attack_single_run(pixels, labels)  # every image starts correct
    with torch.no_grad():
        their_robust = int((module(adversarial).argmax(1) == labels).sum())
    theirs = time.perf_counter() - start
    return (
        f"{eps * 255:g}/255",
        f"{ours:.1f}",
        f"{theirs:.1f}",
        f"{ours / theirs:.2f}",
        f"{result.per_epsilon[0].robust}/{result.total}",
        f"{their_robust}/{len(labels)}",
        _mean_median(service_queries),
        _mean_median([int(count) for count in counts.tolist()]),
    )


def _mean_median(counts: list[int]) -> str:
    if not counts:
        return "- (none attacked)"
    return f"{statistics.mean(counts):.1f}, {statistics.median(counts):g} ({len(counts)} images)"


if __name__ == "__main__":
    main()
