"""Prometheus metrics, one registry per service so that `nnprobe serve all` keeps them apart.

Request metrics are recorded by the status interceptor (``interceptors.observe``); services add their own
(the vision batcher, training jobs) through ``metrics_for(service)``.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: The ``protocol`` label of request metrics: the Open Inference Protocol's calls, or nnprobe's own.
OPEN_INFERENCE_PREFIX = "/inference."


def protocol_of(method: str) -> str:
    """``open_inference`` for ``/inference.GRPCInferenceService/...`` methods, else ``nnprobe``."""
    return "open_inference" if method.startswith(OPEN_INFERENCE_PREFIX) else "nnprobe"


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ServiceMetrics:
    """The metrics of one service. Create through ``metrics_for``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nnprobe_requests",
            "Finished RPCs by method, status code and protocol (nnprobe, open_inference).",
            ["method", "code", "protocol"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nnprobe_request_duration_seconds",
            "RPC latency by method and protocol.",
            ["method", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "nnprobe_requests_in_flight",
            "RPCs being served now, by method and protocol.",
            ["method", "protocol"],
            registry=self.registry,
        )
        self._http: Any = None
        self._collectors: dict[str, Any] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        protocol = protocol_of(method)
        self.requests.labels(method=method, code=code, protocol=protocol).inc()
        self.latency.labels(method=method, protocol=protocol).observe(seconds)

    def replace_collector(self, name: str, collector: Any) -> None:
        """Register ``collector`` under ``name``, unregistering the one a previous server of this service
        in the same process left there."""
        with _lock:
            old = self._collectors.pop(name, None)
            if old is not None:
                self.registry.unregister(old)
            self.registry.register(collector)
            self._collectors[name] = collector

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics on ``port`` (0: any free port); returns the port."""
        server, _thread = start_http_server(port, addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        self._http = server
        return server.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


_lock = threading.Lock()
_by_service: dict[str, ServiceMetrics] = {}


def metrics_for(service: str) -> ServiceMetrics:
    """The process-wide metrics of ``service`` (created on first use)."""
    with _lock:
        if service not in _by_service:
            _by_service[service] = ServiceMetrics(service)
        return _by_service[service]
