"""`make demo`: start the three servers as processes, walk through each analysis via the SDK.

Each section is a module of this folder with ``run(address: str, out_dir: Path) -> None``; it prints its
results and saves files (JSON, PNG) into ``demo-output/``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from nnprobe import AttentionClient, NnprobeError, SequenceClient, VisionClient  # noqa: E402

#: (section module, service it talks to), in the order of the original course notebook.
SECTIONS = [
    ("demo.receptive_field", "vision"),
    ("demo.classification", "vision"),
    ("demo.adversarial", "vision"),
    ("demo.recurrent", "sequence"),
    ("demo.language_model", "sequence"),
    ("demo.attention", "attention"),
]
CLIENTS = {"vision": VisionClient, "sequence": SequenceClient, "attention": AttentionClient}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers(names: list[str], workdir: Path) -> Iterator[dict[str, str]]:
    """Start one server process per service; yield their addresses; stop them with SIGTERM."""
    procs, addresses = [], {}
    try:
        for name in names:
            port = free_port()
            env = {
                **os.environ,
                "NNPROBE_DATA_DIR": str(workdir / "data"),
                "NNPROBE_CACHE_DIR": str(workdir / "cache"),
            }
            log = (workdir / f"{name}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        f"nnprobe_services.{name}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            addresses[name] = f"127.0.0.1:{port}"
        for name, address in addresses.items():
            with CLIENTS[name](address) as client:
                client.wait_until_ready(timeout=120)
                if client.health() != "SERVING":
                    raise RuntimeError(f"{name} server is not serving")
        yield addresses
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    out_dir = ROOT / "demo-output"
    out_dir.mkdir(exist_ok=True)
    sections = [
        (module, service)
        for module, service in SECTIONS
        if (ROOT / (module.replace(".", "/") + ".py")).exists()
    ]
    started = time.monotonic()
    with servers(sorted({service for _, service in sections}), out_dir) as addresses:
        print(f"servers: {', '.join(f'{k} {v}' for k, v in addresses.items())}")
        for module, service in sections:
            print(f"\n{'=' * 100}")
            try:
                importlib.import_module(module).run(addresses[service], out_dir)
            except NnprobeError as error:
                if error.code == grpc.StatusCode.FAILED_PRECONDITION:  # e.g. data missing on this machine
                    print(f"skipped: {error}")
                    continue
                print(f"{module} failed: {error}", file=sys.stderr)
                return 1
    print(
        f"\nDone in {time.monotonic() - started:.0f}s. Results and pictures are in {out_dir}/ "
        "(server logs too)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
