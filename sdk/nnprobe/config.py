"""Client-side settings: server addresses, deadlines, TLS."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Default address of each service, overridable with the environment variable next to it.
DEFAULT_ADDRESSES = {
    "vision": ("NNPROBE_VISION_ADDR", "localhost:50051"),
    "sequence": ("NNPROBE_SEQUENCE_ADDR", "localhost:50052"),
    "attention": ("NNPROBE_ATTENTION_ADDR", "localhost:50053"),
}

#: Deadline applied to each call unless the client or the call says otherwise, in seconds.
DEFAULT_TIMEOUT = 30.0

#: Largest message the SDK sends or accepts, in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def default_address(service: str) -> str:
    """The address for ``service`` from its ``NNPROBE_<SERVICE>_ADDR`` variable, else the default."""
    env, fallback = DEFAULT_ADDRESSES[service]
    return os.environ.get(env) or fallback


@dataclass(frozen=True)
class TlsConfig:
    """Transport security for a client channel.

    All paths are PEM files. With none of them set the system's root certificates are used.
    """

    #: CA bundle that signed the server's certificate.
    ca: str | Path | None = None
    #: Client certificate, for servers that require mutual TLS.
    cert: str | Path | None = None
    #: Private key of the client certificate.
    key: str | Path | None = None

    def credentials(self):
        """The ``grpc.ChannelCredentials`` these files describe."""
        import grpc

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert)
        )
