"""A job's training curves as a PNG (matplotlib, Agg): loss and perplexity against the step."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

from nnprobe_services.sequence.jobs.store import EventRecord


def training_curves(events: list[EventRecord], title: str) -> bytes:
    """Left: training loss (nats). Right: training, validation and test perplexity (log scale)."""
    steps = [e.payload["step"] for e in events if e.kind == "step"]
    losses = [e.payload["loss"] for e in events if e.kind == "step"]
    train_ppl = [e.payload["perplexity"] for e in events if e.kind == "step"]
    evals = [e.payload for e in events if e.kind == "evaluation"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, losses, color="C0", label="training loss")
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy (nats)")
    left.grid(alpha=0.3)
    left.legend()
    right.plot(steps, train_ppl, color="C0", label="training")
    if evals:
        right.plot(
            [e["step"] for e in evals],
            [e["valid_perplexity"] for e in evals],
            "o-",
            color="C1",
            label="valid",
        )
        right.plot(
            [e["step"] for e in evals], [e["test_perplexity"] for e in evals], "s--", color="C2", label="test"
        )
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("perplexity")
    right.grid(alpha=0.3, which="both")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
