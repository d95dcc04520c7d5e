"""Entry point shared by ``python -m nnprobe_services.<service>``."""

from __future__ import annotations

import sys

from nnprobe_services.server.config import load_config


def main(service: str, argv: list[str] | None = None) -> int:
    try:
        config = load_config(service, argv)  # before the server (and torch) is imported: --help stays quick
        from nnprobe_services.server.app import serve

        serve(config)
    except (ValueError, OSError) as error:
        print(f"nnprobe {service} server: {error}", file=sys.stderr)
        return 2
    return 0
