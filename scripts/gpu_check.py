"""A short check of the accelerated paths, for a machine with CUDA (``make gpu-check``); it runs on a CPU too
and says so.

Device ``auto``; the default classifier through each backend (ONNX Runtime, PyTorch); one PGD attack; one
language-model training step (the notebook's LSTM, 10k words). Prints the device, each backend's device and
the throughput.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from nnprobe_services.device import resolve_device
from nnprobe_services.sequence.lm.model import LanguageModel, TrainingConfig
from nnprobe_services.sequence.lm.training import make_optimizer
from nnprobe_services.vision.attacks import methods as attacks
from nnprobe_services.vision.models import backends, store
from nnprobe_services.vision.models import registry as models


def rate(count: int, run, repeats: int = 3) -> float:
    """Items per second of ``run()`` (``count`` items per call), best of ``repeats`` after one warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    device = resolve_device("auto")
    gpu = device.type == "cuda"
    print(f"device auto -> {device}" + ("" if gpu else " (no CUDA here: every figure below is the CPU's)"))
    print(f"onnxruntime providers for it: {backends.onnx_providers(device)}")
    batch = torch.rand(32 if gpu else 8, 3, 224, 224)
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("onnxruntime", "pytorch"):
            models_store = store.ModelStore(device, builtin_backend=backend, onnx_cache=Path(folder))
            model = models_store.get(models.DEFAULT_MODEL)
            images = rate(len(batch), lambda m=model: m.predict(batch))
            print(
                f"classify {models.DEFAULT_MODEL} via {model.backend.name} on {model.backend.device}: "
                f"{images:.1f} images/s"
            )
        module = model.module
        pixels = batch[:4].to(device)
        with torch.no_grad():
            labels = module(pixels).argmax(1)
        spec = attacks.AttackSpec(method="pgd", steps=10, early_stop=False)
        run = lambda: list(attacks.attack(module, pixels, labels, False, spec, lambda: False))  # noqa: E731
        print(f"PGD 10 steps on {device}: {rate(len(pixels), run, repeats=1):.2f} images/s")
    config = TrainingConfig(hidden_size=1024 if gpu else 256)
    lm = LanguageModel(10_000, config).to(device)
    optimizer = make_optimizer(config, lm)
    tokens = torch.randint(0, 10_000, (config.batch_size, config.sequence_length + 1), device=device)

    def step() -> None:
        logits, _ = lm(tokens[:, :-1], lm.initial_state(config.batch_size, device))
        loss = torch.nn.functional.cross_entropy(logits, tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), config.clip_norm)
        optimizer.step()

    words = config.batch_size * config.sequence_length
    print(f"LM training step (hidden {config.hidden_size}) on {device}: {rate(words, step):.0f} words/s")


if __name__ == "__main__":
    main()
