"""``create_server`` builds a ready-to-start ``grpc.aio`` server; ``serve`` runs servers until a signal.

Each server owns an asyncio event loop in a thread of its own, so the same object serves a process
(``serve``) and an in-process test or embedding (``create_server`` + ``start`` + ``shutdown``). Handlers are
coroutines on that loop; computation runs in the server's bounded ``ComputePool``.

Shutdown (``shutdown(grace)``, SIGTERM/SIGINT under ``serve``): health turns NOT_SERVING and new calls are
refused with UNAVAILABLE; each service's drain hook runs (the sequence service stops training at a step
boundary, checkpoints and marks the job interrupted); then gRPC stops, giving in-flight calls what is left
of the grace period before their work is told to stop.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nnprobe_services.device import resolve_device
from nnprobe_services.server.auth import TokenAuthInterceptor
from nnprobe_services.server.compute import ComputePool, default_workers
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.server.interceptors import StatusInterceptor
from nnprobe_services.server.logs import configure_logging
from nnprobe_services.server.metrics import metrics_for

log = logging.getLogger("nnprobe.server")

#: Where each service's ``register(server, runtime) -> Registration`` lives.
SERVICE_MODULES = {
    "vision": "nnprobe_services.vision.servicer",
    "sequence": "nnprobe_services.sequence.servicer",
    "attention": "nnprobe_services.attention.servicer",
}


@dataclass
class Runtime:
    """What a servicer gets at registration: its configuration, device and compute pool."""

    config: ServerConfig
    device: torch.device
    compute: ComputePool


@dataclass
class Registration:
    """What a service module's ``register`` returns.

    ``names``: full service names (for health and reflection). ``drain``: awaited on shutdown with the
    seconds of grace left, before gRPC stops; it ends background work cleanly (must return within them).
    """

    names: list[str]
    drain: Callable[[float], Awaitable[None]] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)


class Server:
    """A ``grpc.aio`` server on its own event-loop thread, with health, reflection and a compute pool.

    ``start()``, ``shutdown(grace) -> threading.Event`` (also ``stop``), ``wait_for_termination()``;
    ``port`` and ``metrics_port`` are the bound ports.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.device = resolve_device(config.common.device)
        workers = config.common.compute_workers or default_workers(self.device.type)
        queue = config.common.compute_queue if config.common.compute_queue >= 0 else 4 * workers
        self.compute = ComputePool(workers, queue, name=f"{config.service}-compute")
        self.metrics = metrics_for(config.service)
        self.port = 0
        self.metrics_port = 0
        self.service_names: list[str] = []
        self.registration = Registration([])
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"{config.service}-loop", daemon=True)
        self._thread.start()
        self._stopped = threading.Event()
        self._shutting_down = False
        self.interceptor = StatusInterceptor(self.metrics, config.common.max_concurrent_rpcs)

    # -- the loop thread -----------------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the server's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    # -- building ------------------------------------------------------------------------------------
    async def _build(self) -> int:
        config = self.config
        interceptors: list[grpc.aio.ServerInterceptor] = [self.interceptor]
        tokens = config.tokens()
        if tokens:
            interceptors.append(TokenAuthInterceptor(tokens))
        self.grpc_server = grpc.aio.server(
            interceptors=interceptors,
            # The interceptor counts open calls exactly; gRPC's own bound is a guard before decoding.
            maximum_concurrent_rpcs=2 * config.common.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", config.common.max_message_bytes),
                ("grpc.max_send_message_length", config.common.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        module = importlib.import_module(SERVICE_MODULES[config.service])
        self.registration = module.register(self.grpc_server, Runtime(config, self.device, self.compute))
        self.service_names = list(self.registration.names)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        try:
            if config.common.tls_cert is not None and config.common.tls_key is not None:
                credentials = grpc.ssl_server_credentials(
                    [(config.common.tls_key.read_bytes(), config.common.tls_cert.read_bytes())],
                    root_certificates=config.common.tls_client_ca.read_bytes()
                    if config.common.tls_client_ca
                    else None,
                    require_client_auth=config.common.tls_client_ca is not None,
                )
                port = self.grpc_server.add_secure_port(config.address, credentials)
            else:
                port = self.grpc_server.add_insecure_port(config.address)
        except RuntimeError as error:
            raise OSError(f"could not bind {config.address}: {error}") from None
        if port == 0:
            raise OSError(f"could not bind {config.address}")
        return port

    # -- running -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start serving RPCs, and metrics over HTTP when ``metrics_port`` is set."""
        self.call(self.grpc_server.start())
        if self.config.common.metrics_port:
            self.metrics_port = self.metrics.serve_http(
                self.config.common.host, self.config.common.metrics_port
            )
            log.info(
                "%s metrics on http://%s:%d/metrics",
                self.config.service,
                self.config.common.host,
                self.metrics_port,
            )

    def shutdown(self, grace: float | None = None) -> threading.Event:
        """Health NOT_SERVING, refuse new calls, drain background work, then stop within ``grace`` seconds
        (default ``grace_seconds``). Returns an event set once everything has stopped."""
        if self._shutting_down:
            return self._stopped
        self._shutting_down = True
        grace = self.config.common.grace_seconds if grace is None else grace
        future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop)
        future.add_done_callback(lambda _f: self._stopped.set())
        return self._stopped

    stop = shutdown

    async def _shutdown(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        try:
            self.interceptor.draining = True
            await self.health.enter_graceful_shutdown()
            if self.registration.drain is not None:
                try:
                    await asyncio.wait_for(self.registration.drain(grace), timeout=max(grace, 0.1))
                except TimeoutError:
                    log.warning("%s: background work did not drain within %.1fs", self.config.service, grace)
            # In-flight calls get what is left of the grace; gRPC then cancels them, which sets their stop
            # signals (``ComputePool.run``), and their threads end at the next check.
            await self.grpc_server.stop(max(0.0, deadline - time.monotonic()))
            self.compute.stop_all()
        finally:
            self.compute.shutdown()
            for close in self.registration.closers:
                try:
                    close()
                except Exception:  # a closer's failure must not keep the server up
                    log.exception("%s: closing failed", self.config.service)
            self.metrics.stop_http()
            self.loop.call_soon(self.loop.stop)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout`` seconds); True when it has."""
        return self._stopped.wait(timeout)


def create_server(config: ServerConfig) -> tuple[Server, int]:
    """Build the server for ``config.service`` bound to ``config.port`` (0: any free port).

    The server has the service, grpc.health.v1 (SERVING) and reflection registered, and is not started.
    Raises ``OSError`` when the address cannot be bound.
    """
    server = Server(config)
    try:
        port = server.call(server._build())
    except BaseException:
        server.loop.call_soon_threadsafe(server.loop.stop)
        raise
    server.port = port
    tokens = config.tokens()
    security = (
        ("mutual TLS" if config.common.tls_client_ca else "TLS") if config.common.tls_cert else "plain text"
    )
    log.info(
        "%s service on %s:%d, device %s, %d compute workers + %d queued, %s, %s",
        config.service,
        config.common.host,
        port,
        server.device,
        server.compute.workers,
        server.compute.queue,
        security,
        f"{len(tokens)} bearer token(s)" if tokens else "no authentication",
    )
    return server, port


def serve(configs: ServerConfig | Sequence[ServerConfig]) -> None:
    """Start one server per config and block until SIGTERM/SIGINT, then shut them down gracefully.

    The grace period counts from the signal; signals after the shutdown are ignored. A computation that has
    not reached its next stop check when the grace period ends (one long step of a core) does not hold the
    process: its call has already been answered, so the process ends at once with status 0 (status 1 when
    a server did not stop at all).
    """
    configs = [configs] if isinstance(configs, ServerConfig) else list(configs)
    configure_logging(configs[0].common.log_level, configs[0].common.log_format)
    servers = [create_server(config)[0] for config in configs]
    for server in servers:
        server.start()
    stopping = threading.Event()
    signalled: list[float] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not signalled:
            signalled.append(time.monotonic())
        log.info("received %s: draining", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(0.5):
        pass
    start = signalled[0]
    deadlines = [start + server.config.common.grace_seconds for server in servers]
    done = [
        server.shutdown(max(0.0, deadline - time.monotonic()))
        for server, deadline in zip(servers, deadlines, strict=True)
    ]
    stuck, computing = [], 0
    for server, event, deadline in zip(servers, done, deadlines, strict=True):
        # The shutdown itself ends the calls at the deadline; a little more for its last steps.
        if not event.wait(max(0.0, deadline - time.monotonic()) + 5.0):
            log.error("%s did not stop within its grace period", server.config.service)
            stuck.append(server.config.service)
            continue
        computing += server.compute.wait_idle(max(0.0, deadline - time.monotonic()))
    # The servers have stopped; the interpreter's exit (seconds with PyTorch loaded) restores the default
    # handlers, so one more signal then would end the process with -SIGTERM instead of 0. Ignored handlers
    # are kept.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if stuck or computing:
        if computing:
            log.warning(
                "stopped; %d computation(s) of ended calls had not reached their next stop check: "
                "exiting without them",
                computing,
            )
        logging.shutdown()
        os._exit(1 if stuck else 0)
    log.info("stopped")
