"""Robust accuracy against ε as a PNG (matplotlib, Agg), with its 95% Wilson intervals."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

from nnprobe_services.vision.robustness.results import RobustnessResult


def accuracy_curve(result: RobustnessResult, title: str) -> bytes:
    """Robust accuracy (with its Wilson interval as a band) against ε in units of 1/255, starting from the
    clean accuracy at ε = 0."""
    eps = [0.0] + [s.epsilon * 255 for s in result.per_epsilon]
    accuracy = [result.clean_accuracy] + [s.accuracy for s in result.per_epsilon]
    low = [result.clean_interval[0]] + [s.low for s in result.per_epsilon]
    high = [result.clean_interval[1]] + [s.high for s in result.per_epsilon]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.fill_between(eps, low, high, color="C0", alpha=0.2, label="95% Wilson interval")
    axes.plot(eps, accuracy, "o-", color="C0", label="robust accuracy")
    axes.set_xlabel(f"ε ({result.norm}, ×1/255)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
