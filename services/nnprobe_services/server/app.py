"""``create_server`` builds a ready-to-start server; ``serve`` runs servers until a signal arrives."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nnprobe_services.server.auth import TokenAuthInterceptor
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.server.device import resolve_device
from nnprobe_services.server.interceptors import StatusInterceptor
from nnprobe_services.server.logs import configure_logging
from nnprobe_services.server.metrics import metrics_for

log = logging.getLogger("nnprobe.server")

#: Where each service's ``register(server, config, device) -> [full service names]`` lives.
SERVICE_MODULES = {
    "vision": "nnprobe_services.vision.servicer",
    "sequence": "nnprobe_services.sequence.servicer",
    "attention": "nnprobe_services.attention.servicer",
}


class Server:
    """A started-or-not gRPC server together with its health service.

    Behaves like ``grpc.Server`` (``start``, ``stop``, ``wait_for_termination`` are forwarded) and adds
    ``shutdown(grace)``: health NOT_SERVING first, then stop.
    """

    def __init__(
        self,
        grpc_server: grpc.Server,
        health_servicer: health.HealthServicer,
        config: ServerConfig,
        service_names: list[str],
    ) -> None:
        self.grpc_server = grpc_server
        self.health = health_servicer
        self.config = config
        self.service_names = service_names
        self.port = 0
        self.metrics_port = 0
        self.metrics = metrics_for(config.service)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grpc_server, name)

    def shutdown(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls (health NOT_SERVING, then stop) and give in-flight calls ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(self.config.grace_seconds if grace is None else grace)
        threading.Thread(target=self._stop_metrics_after, args=(done,), daemon=True).start()
        return done

    def start(self) -> None:
        """Start serving RPCs, and metrics over HTTP when ``metrics_port`` is set."""
        self.grpc_server.start()
        if self.config.metrics_port:
            self.metrics_port = self.metrics.serve_http(self.config.host, self.config.metrics_port)
            log.info(
                "%s metrics on http://%s:%d/metrics", self.config.service, self.config.host, self.metrics_port
            )

    def _stop_metrics_after(self, done: threading.Event) -> None:
        done.wait()
        self.metrics.stop_http()


def create_server(config: ServerConfig) -> tuple[Server, int]:
    """Build the server for ``config.service`` bound to ``config.port`` (0: any free port).

    The server has the service, grpc.health.v1 (SERVING) and reflection registered, and is not started.
    """
    device = resolve_device(config.device)
    interceptors: list[grpc.ServerInterceptor] = [
        StatusInterceptor(metrics_for(config.service), config.max_concurrent_rpcs)
    ]
    tokens = config.tokens()
    if tokens:
        interceptors.append(TokenAuthInterceptor(tokens))
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=f"{config.service}-rpc"),
        interceptors=interceptors,
        # The interceptor enforces the limit exactly; gRPC's own count lasts until an answer is sent, so a
        # client calling again at once briefly holds two places there: give it room for that.
        maximum_concurrent_rpcs=2 * config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    module = importlib.import_module(SERVICE_MODULES[config.service])
    names: list[str] = module.register(grpc_server, config, device)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], grpc_server)

    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
                root_certificates=config.tls_client_ca.read_bytes() if config.tls_client_ca else None,
                require_client_auth=config.tls_client_ca is not None,
            )
            port = grpc_server.add_secure_port(config.address, credentials)
        else:
            port = grpc_server.add_insecure_port(config.address)
    except RuntimeError as error:
        raise OSError(f"could not bind {config.address}: {error}") from None
    if port == 0:
        raise OSError(f"could not bind {config.address}")
    server = Server(grpc_server, health_servicer, config, names)
    server.port = port
    security = ("mutual TLS" if config.tls_client_ca else "TLS") if config.tls_cert else "plain text"
    log.info(
        "%s service on %s:%d, device %s, %s, %s",
        config.service,
        config.host,
        port,
        device,
        security,
        f"{len(tokens)} bearer token(s)" if tokens else "no authentication",
    )
    return server, port


def serve(configs: ServerConfig | Sequence[ServerConfig]) -> None:
    """Start one server per config and block until SIGTERM/SIGINT, then shut them down gracefully."""
    configs = [configs] if isinstance(configs, ServerConfig) else list(configs)
    configure_logging(configs[0].log_level, configs[0].log_format)
    servers = [create_server(config)[0] for config in configs]
    for server in servers:
        server.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(0.5):
        pass
    done = [server.shutdown() for server in servers]
    for event in done:
        event.wait()
    log.info("stopped")
