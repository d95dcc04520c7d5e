"""The metrics and log line of attacks that stop early (cancellation, deadline, server drain)."""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("nnprobe.vision")


class AttackMetrics:
    """How many attacks stopped early, and the last iteration the latest of them finished."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stops = Counter(
            "nnprobe_attack_stopped", "Attacks stopped by cancellation or deadline.", registry=registry
        )
        self.stopped_at = Gauge(
            "nnprobe_attack_stopped_at_iteration",
            "The last iteration finished by the most recently stopped attack.",
            registry=registry,
        )

    def stopped(self, iteration: int, steps: int, reason: str) -> None:
        """Record an attack of ``steps`` iterations that stopped after ``iteration``, and log why."""
        self.stops.inc()
        self.stopped_at.set(iteration)
        log.info("GenerateAdversarial stopped after iteration %d of %d: %s", iteration, steps, reason)


_lock = threading.Lock()
_metrics: dict[int, AttackMetrics] = {}


def attack_metrics(registry: CollectorRegistry) -> AttackMetrics:
    """The attack metrics registered in ``registry`` (created once per registry: every server of a process
    shares its service's registry)."""
    with _lock:
        if id(registry) not in _metrics:
            _metrics[id(registry)] = AttackMetrics(registry)
        return _metrics[id(registry)]
