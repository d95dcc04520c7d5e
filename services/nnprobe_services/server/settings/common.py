"""Settings every server reads: binding, device, folders, limits, the compute pool, TLS, tokens, logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from nnprobe_services.server.settings.base import ExistingFile, Section, UserPath

#: Each service's port when none is set.
DEFAULT_PORTS = {"vision": 50051, "sequence": 50052, "attention": 50053}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class CommonSettings(Section):
    """Settings every server reads."""

    host: str = Field("[::]", description="Interface to bind.")
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port to bind; 0 picks a free one (create_server returns it); unset: the service's own.",
    )
    device: str = Field(
        "auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (N an index)."
    )
    data_dir: UserPath = Field(
        default_factory=lambda: Path.home() / ".local/share/nnprobe",
        description="Durable data: corpora, job database, checkpoints.",
    )
    cache_dir: UserPath = Field(
        default_factory=lambda: Path.home() / ".cache/nnprobe",
        description="Re-creatable downloads and caches.",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest request or response message, in bytes; larger requests get RESOURCE_EXHAUSTED "
        "undecoded.",
    )
    compute_workers: int = Field(
        0,
        ge=0,
        description="Threads of the compute pool (CPU/GPU work); 0 picks for the device (CPU: the cores, at "
        "most 8; GPU: 4).",
    )
    compute_queue: int = Field(
        -1,
        description="Calls that may wait for a compute thread; one more gets RESOURCE_EXHAUSTED at once. "
        "-1: 4 per worker.",
    )
    max_concurrent_rpcs: int = Field(
        1024,
        gt=0,
        description="Open calls (idle streams included) accepted before new ones get RESOURCE_EXHAUSTED.",
    )
    max_tensor_elements: int = Field(
        50_000_000,
        gt=0,
        description="Largest tensor (in elements) any request may carry or make the server allocate.",
    )
    grace_seconds: float = Field(
        10.0, ge=0, description="Seconds in-flight calls get to finish after SIGTERM."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="HTTP port serving Prometheus metrics at /metrics; 0 turns metrics off.",
    )
    tls_cert: ExistingFile | None = Field(
        None, description="PEM certificate chain; with tls_key the server speaks TLS only."
    )
    tls_key: ExistingFile | None = Field(None, description="PEM private key of tls_cert.")
    tls_client_ca: ExistingFile | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).",
    )
    auth_token: str | None = Field(
        None,
        repr=False,
        description="A bearer token every call (but health checks) must carry. Never logged.",
    )
    auth_token_file: ExistingFile | None = Field(
        None,
        description="A file of accepted bearer tokens, one per line (# comments allowed). Never logged.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged: debug, info, warning or error."
    )
    log_format: Literal["text", "json"] = Field("text", description="text, or json (one object per line).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        prefix, _, index = device.partition(":")
        if device in ("auto", "cpu", "cuda") or (prefix == "cuda" and index.isascii() and index.isdigit()):
            return device
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")

    @field_validator("compute_queue")
    @classmethod
    def _queue_or_default(cls, queue: int) -> int:
        if queue < -1:
            raise ValueError(f"compute_queue must be >= 0 (or -1: 4 per worker), not {queue}")
        return queue

    @field_validator("auth_token")
    @classmethod
    def _token_not_blank(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError("auth_token must not be empty")
        return token

    @model_validator(mode="before")
    @classmethod
    def _tls_files_together(cls, values: Any) -> Any:
        """Checked before the files exist, so that a missing partner is named first."""
        if isinstance(values, dict):
            if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
                raise ValueError("tls_cert and tls_key must be given together")
            if values.get("tls_client_ca") is not None and values.get("tls_cert") is None:
                raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return values

    @property
    def address(self) -> str:
        """``host:port`` to bind, an IPv6 host in brackets (``[::1]:50051``, ``[::]:50051``)."""
        host = self.host.strip("[]")
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def tokens(self) -> list[str]:
        """Accepted bearer tokens (empty: authentication off)."""
        tokens = [self.auth_token.strip()] if self.auth_token else []
        if self.auth_token_file is not None:
            for line in Path(self.auth_token_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        return tokens
