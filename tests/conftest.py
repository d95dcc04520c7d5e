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
    """The repository's sibling data folder (Penn Treebank, seed images), when present."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} not present")
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


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the suite's own (see tests/postgres.py); fails under CI=true when the
    server programs are missing, skips elsewhere."""
    from tests.postgres import postgres_server, server_bin

    if server_bin() is None:
        message = "PostgreSQL's server programs are not installed (make test installs Debian's postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty job database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("postgres").create_database()
