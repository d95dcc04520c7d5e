"""Server configuration: typed defaults, overridden by ``NNPROBE_*`` variables, overridden by flags.

One parser serves the three servers; only the default port differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PORTS = {"vision": 50051, "sequence": 50052, "attention": 50053}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server needs to start. Each field has an ``NNPROBE_<FIELD>`` variable and a flag."""

    #: Which service this process serves: ``vision``, ``sequence`` or ``attention``.
    service: str = "attention"
    #: Interface to bind.
    host: str = "[::]"
    #: Port to bind; 0 picks a free one (``create_server`` returns it).
    port: int = 50053
    #: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "auto"
    #: Durable data: corpora, job database, checkpoints.
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local/share/nnprobe")
    #: Re-creatable downloads and caches.
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache/nnprobe")
    #: Largest request or response message, in bytes; larger requests get RESOURCE_EXHAUSTED undecoded.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Threads of the compute pool (CPU/GPU work); 0 picks for the device (CPU: the cores, at most 8; GPU: 4).
    compute_workers: int = 0
    #: Calls that may wait for a compute thread; one more gets RESOURCE_EXHAUSTED at once. -1: 4 per worker.
    compute_queue: int = -1
    #: Open calls (idle streams included) accepted before new ones get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1024
    #: Largest tensor (in elements) any request may carry or make the server allocate.
    max_tensor_elements: int = 50_000_000
    #: Most permutations one attention check may evaluate.
    max_permutations: int = 1_000_000
    #: Seconds in-flight calls get to finish after SIGTERM.
    grace_seconds: float = 10.0
    #: HTTP port serving Prometheus metrics at /metrics; 0 turns metrics off.
    metrics_port: int = 0
    #: PEM certificate chain; with ``tls_key`` the server speaks TLS only.
    tls_cert: Path | None = None
    #: PEM private key of ``tls_cert``.
    tls_key: Path | None = None
    #: PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    tls_client_ca: Path | None = None
    #: A bearer token every call (but health checks) must carry. Never logged.
    auth_token: str | None = field(default=None, repr=False)
    #: A file of accepted bearer tokens, one per line (``#`` comments allowed). Never logged.
    auth_token_file: Path | None = None
    #: ``debug``, ``info``, ``warning`` or ``error``.
    log_level: str = "info"
    #: ``text`` or ``json`` (one object per line).
    log_format: str = "text"
    #: Folder holding ptb.{train,valid,test}.txt.gz, searched before <data_dir>/ptb, <cache_dir>/ptb and
    #: the repository's sibling shared/data/ptb.
    ptb_dir: Path | None = None
    #: Seconds to wait for the canonical PTB source when the files are missing; 0 never downloads.
    ptb_download_timeout: float = 10.0
    #: Largest corpus UploadCorpus accepts, in bytes of text over all splits.
    max_corpus_bytes: int = 64 * 1024 * 1024
    #: Training jobs that may wait in the queue (over all devices and replicas) before StartTraining is
    #: refused.
    max_queued_jobs: int = 16
    #: The job database: unset keeps jobs in ``<data_dir>/jobs.sqlite3`` (one replica, or several processes
    #: on one host); ``postgresql://user:password@host:5432/db`` lets replicas on any host share one queue
    #: (they must share ``data_dir`` too: corpora and checkpoints). Never logged with its password.
    database_url: str | None = field(default=None, repr=False)
    #: This replica's name in the job database; unset: ``<host name>-<process id>``. Must be unique among
    #: the live replicas; a replica restarting under its old name takes its dead jobs over at once.
    replica_id: str | None = None
    #: Seconds a replica's claim on a running job lasts without a heartbeat; after that another replica
    #: takes the job over from its last checkpoint.
    job_lease_seconds: float = 30.0
    #: Seconds between a replica's rounds of claiming queued jobs and renewing its leases (a cancel sent to
    #: another replica reaches the owner within one round).
    job_poll_seconds: float = 1.0
    #: Takeovers in a row after which a job is left INTERRUPTED rather than claimed again.
    max_job_takeovers: int = 3
    #: Most words one Sample request may generate.
    max_sample_words: int = 10_000
    #: Classifier used when a vision request names none.
    default_model: str = "efficientnet_lite0"
    #: Folder of classifier weights with torchvision's file names (``alexnet-owt-7be5be79.pth``), searched
    #: after ``model_weights`` and before the torch hub cache (``$TORCH_HOME/hub/checkpoints``).
    weights_dir: Path | None = None
    #: Explicit weights files, ``name=path`` pairs separated by commas (``alexnet=/w/alexnet.pth``).
    model_weights: str | None = None
    #: Seconds to wait for a missing weights file's download into the hub cache; 0 never downloads.
    weights_download_timeout: float = 5.0
    #: Gather concurrent Classify calls into batches (``false``: each call runs its own forward pass).
    dynamic_batching: bool = True
    #: Most images in one batched forward pass; 0 picks 16 on a CPU and 64 on a GPU.
    batch_max_size: int = 0
    #: Longest wait, in milliseconds, for a batch to fill once its first image is queued; unset picks
    #: 5 on a CPU and 2 on a GPU.
    batch_max_delay_ms: float | None = None
    #: Most images waiting in a model's batching queue before Classify gets RESOURCE_EXHAUSTED.
    batch_queue_size: int = 256
    #: Largest encoded image, in bytes.
    max_image_bytes: int = 32 * 1024 * 1024
    #: Largest image, in pixels (width * height), checked from the header before decoding.
    max_image_pixels: int = 89_478_485
    #: Most iterations one adversarial attack may run.
    max_attack_steps: int = 1000
    #: Longest wait, in seconds, for a transfer address's server to accept a connection (a replica that is
    #: restarting), within what is left of the request's deadline; 0 does not wait for one that is down.
    transfer_connect_timeout: float = 10.0
    #: The model repository (Triton's layout: ``<name>/config.yaml``, ``<name>/<version>/model.onnx`` or
    #: ``model.pt2``); unset: ``<data_dir>/models``. Replicas that mount one folder share it.
    model_repository: Path | None = None
    #: Largest model file UploadModel accepts (and repository model with its external data), in bytes.
    max_model_bytes: int = 1 << 30
    #: Most graph nodes a repository model may have.
    max_model_nodes: int = 100_000
    #: Engine of the built-in classifiers: ``auto`` (ONNX Runtime on a CPU through an export made once and
    #: cached under ``cache_dir``, or on a GPU its CUDA provider supports; else PyTorch), ``onnxruntime`` or
    #: ``pytorch``.
    builtin_backend: str = "auto"

    def validate(self) -> ServerConfig:
        """Return self, or raise ``ValueError`` naming the bad setting."""
        if self.service not in DEFAULT_PORTS:
            raise ValueError(f"service must be one of {sorted(DEFAULT_PORTS)}, not {self.service!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        for name in (
            "max_message_bytes",
            "max_concurrent_rpcs",
            "max_tensor_elements",
            "max_permutations",
            "max_corpus_bytes",
            "max_queued_jobs",
            "max_job_takeovers",
            "max_sample_words",
            "batch_queue_size",
            "max_image_bytes",
            "max_image_pixels",
            "max_attack_steps",
            "max_model_bytes",
            "max_model_nodes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.ptb_download_timeout < 0:
            raise ValueError(f"ptb_download_timeout must be >= 0, not {self.ptb_download_timeout}")
        if not self.job_lease_seconds > 0 or not self.job_poll_seconds > 0:
            raise ValueError("job_lease_seconds and job_poll_seconds must be positive")
        if self.job_poll_seconds * 2 > self.job_lease_seconds:
            raise ValueError(
                f"job_poll_seconds ({self.job_poll_seconds}) must be at most half of job_lease_seconds "
                f"({self.job_lease_seconds}): a lease is renewed once per round"
            )
        if self.database_url is not None and not self.database_url.startswith(DATABASE_SCHEMES):
            raise ValueError(f"database_url must start with one of {DATABASE_SCHEMES}")
        if self.replica_id is not None and not self.replica_id.strip():
            raise ValueError("replica_id must not be empty")
        if self.batch_max_size < 0:
            raise ValueError(f"batch_max_size must be >= 0, not {self.batch_max_size}")
        if self.batch_max_delay_ms is not None and not 0 <= self.batch_max_delay_ms <= 60_000:
            raise ValueError(f"batch_max_delay_ms must be in 0..60000, not {self.batch_max_delay_ms}")
        if self.weights_download_timeout < 0:
            raise ValueError(f"weights_download_timeout must be >= 0, not {self.weights_download_timeout}")
        if not 0 <= self.transfer_connect_timeout <= 3600:
            raise ValueError(
                f"transfer_connect_timeout must be in 0..3600 seconds, not {self.transfer_connect_timeout}"
            )
        if self.builtin_backend not in ("auto", "onnxruntime", "pytorch"):
            raise ValueError(
                f"builtin_backend must be auto, onnxruntime or pytorch, not {self.builtin_backend!r}"
            )
        if not self.default_model.strip():
            raise ValueError("default_model must not be empty")
        if self.weights_dir is not None and not Path(self.weights_dir).is_dir():
            raise ValueError(f"weights_dir: no such folder {self.weights_dir}")
        for name, path in self.weights_files().items():
            if not name or not path.name:
                raise ValueError(f"model_weights entries are name=path, got {self.model_weights!r}")
        if self.compute_workers < 0:
            raise ValueError(
                f"compute_workers must be >= 0 (0: pick for the device), not {self.compute_workers}"
            )
        if self.compute_queue < -1:
            raise ValueError(f"compute_queue must be >= 0 (or -1: 4 per worker), not {self.compute_queue}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, not {self.grace_seconds}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, not {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {self.log_format!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, not {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token must not be empty")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        return self

    @property
    def model_repository_dir(self) -> Path:
        """The model repository folder (``model_repository``, else ``<data_dir>/models``)."""
        return Path(self.model_repository or Path(self.data_dir) / "models").expanduser()

    @property
    def address(self) -> str:
        """``host:port`` to bind, an IPv6 host in brackets (``[::1]:50051``, ``[::]:50051``)."""
        host = self.host.strip("[]")
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def weights_files(self) -> dict[str, Path]:
        """``model_weights`` as {model name: path}."""
        files: dict[str, Path] = {}
        for entry in filter(None, (e.strip() for e in (self.model_weights or "").split(","))):
            name, sep, path = entry.partition("=")
            if not sep:
                raise ValueError(f"model_weights entries are name=path, not {entry!r}")
            files[name.strip()] = Path(path.strip()).expanduser()
        return files

    def tokens(self) -> list[str]:
        """Accepted bearer tokens (empty: authentication off)."""
        tokens = [self.auth_token.strip()] if self.auth_token else []
        if self.auth_token_file is not None:
            for line in Path(self.auth_token_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        return tokens


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isascii() and index.isdigit()


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "str | None": str,
    "Path": lambda raw: Path(raw).expanduser(),
    "Path | None": lambda raw: Path(raw).expanduser(),
    "float | None": float,
    "bool": lambda raw: _parse_bool(raw),
}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, not {raw!r}")


def _fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ServerConfig) if f.name != "service"]


def _convert(f: dataclasses.Field, raw: str):
    kind = _PARSERS[str(f.type)]
    return kind(raw)


def build_parser(service: str) -> argparse.ArgumentParser:
    """Flags for every ``ServerConfig`` field (``--max-message-bytes``...); unset flags stay ``None``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m nnprobe_services.{service}",
        description=f"Run the nnprobe {service} server. Every flag also reads NNPROBE_<NAME>.",
    )
    add_server_flags(parser)
    return parser


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    for f in _fields():
        flag = "--" + f.name.replace("_", "-")
        doc = f"(env NNPROBE_{f.name.upper()})"
        choices = {"log_level": LOG_LEVELS, "log_format": LOG_FORMATS}.get(f.name)
        parser.add_argument(
            flag, dest=f.name, default=None, choices=choices, type=functools.partial(_convert, f), help=doc
        )


def load_config(
    service: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: argparse.Namespace | None = None,
) -> ServerConfig:
    """Defaults < ``NNPROBE_*`` environment < flags. Raises ``ValueError`` on a bad value."""
    environ = os.environ if environ is None else environ
    values: dict = {"service": service, "port": DEFAULT_PORTS[service]}
    for f in _fields():
        raw = environ.get(f"NNPROBE_{f.name.upper()}")
        if raw:
            try:
                values[f.name] = _convert(f, raw)
            except ValueError as error:
                raise ValueError(f"NNPROBE_{f.name.upper()}={raw!r}: {error}") from None
    if flags is None:
        flags = build_parser(service).parse_args(argv)
    for f in _fields():
        value = getattr(flags, f.name, None)
        if value is not None:
            values[f.name] = value
    return ServerConfig(**values).validate()
