"""Shared server bootstrap: configuration, server creation, health, reflection, interceptors.

``create_server`` and ``serve`` are imported lazily so that reading the configuration (``nnprobe serve
--help``) does not import torch.
"""

from __future__ import annotations

from typing import Any

from nnprobe_services.server.config import ServerConfig, load_config

__all__ = ["ServerConfig", "create_server", "load_config", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_server", "serve"):
        from nnprobe_services.server import app

        return getattr(app, name)
    raise AttributeError(name)
