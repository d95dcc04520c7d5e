"""Fixtures shared by the test suites: in-process servers on ephemeral ports and their clients."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The sibling folder with Penn Treebank and the seed photos (NNPROBE_SHARED_DIR overrides it).
SHARED = Path(os.environ.get("NNPROBE_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The repository's sibling data folder (Penn Treebank, seed images): skipped when absent, except under
    ``CI=true``, where a missing folder fails the tests that need it."""
    if not SHARED.is_dir():
        message = f"shared data folder {SHARED} not present"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


def start_server(service: str, tmp_path: Path, **overrides):
    """Start an in-process server for ``service`` on a free port; return (server, address)."""
    from nnprobe_services.server import ServerConfig, create_server

    config = ServerConfig(
        service=service,
        host="127.0.0.1",
        port=0,
        device="cpu",
        data_dir=tmp_path / "data",
        cache_dir=tmp_path / "cache",
    )
    config = dataclasses.replace(config, **overrides).validate()
    server, port = create_server(config)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def attention_server(tmp_path_factory) -> Iterator[str]:
    server, address = start_server("attention", tmp_path_factory.mktemp("attention"))
    yield address
    server.shutdown(0).wait()


@pytest.fixture(scope="module")
def attention(attention_server):
    from nnprobe import AttentionClient

    with AttentionClient(attention_server, timeout=60) as client:
        yield client
