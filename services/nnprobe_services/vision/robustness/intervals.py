"""The Wilson score interval of a binomial proportion (Wilson 1927, "Probable inference, the law of
succession, and statistical inference"; the method Newcombe 1998 and Brown, Cai & DasGupta 2001 recommend)."""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval for ``successes`` of ``total`` trials at ``confidence``:
    (p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n), z the normal quantile of 1 - (1 - confidence)/2.
    (0.0, 1.0) when ``total`` is 0. Raises ``ValueError`` unless 0 <= successes <= total and
    0 < confidence < 1.
    """
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be in [0, total]; got {successes} of {total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if total == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    n, p = total, successes / total
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    low = 0.0 if successes == 0 else max(0.0, (centre - spread) / scale)  # exact ends: no rounding past p̂
    high = 1.0 if successes == total else min(1.0, (centre + spread) / scale)
    return low, high
