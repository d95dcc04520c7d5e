"""Fixtures shared by every suite: in-process servers on ephemeral ports, their clients, the tiny language
model's settings and corpus, the seed notebook's AlexNet table, free ports, metrics scraping and a PKI.

Test modules never import each other or this file; they ask for these fixtures by name.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

#: The sibling folder with Penn Treebank and the seed photos (NNPROBE_SHARED_DIR overrides it).
SHARED = Path(os.environ.get("NNPROBE_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")

#: The tiny LSTM every language-model test trains: seconds on a CPU.
TINY_LM = dict(
    embed_size=16,
    hidden_size=32,
    batch_size=4,
    sequence_length=8,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=5,
    checkpoint_interval=20,
)

#: The small LSTM the process-level tests train, kill and resume: checkpoints every 4 steps, 6 epochs.
RESUMABLE_LM = dict(
    embed_size=16,
    hidden_size=48,
    batch_size=4,
    sequence_length=8,
    epochs=6,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=2,
    checkpoint_interval=4,
    seed=11,
)

_WORDS = [f"w{i}" for i in range(20)]


def _pattern_text(lines: int, offset: int = 0) -> str:
    """Line k is 6 consecutive words starting at word 3(k + offset) mod 20: fully predictable from the
    previous word (and, after <eos>, from the previous line), so a trained model's perplexity tends to 1."""
    return "".join(
        " ".join(_WORDS[(3 * (k + offset) + j) % 20] for j in range(6)) + "\n" for k in range(lines)
    )


@dataclasses.dataclass(frozen=True)
class NotebookAlexNet:
    """The seed notebook's AlexNet-style layer list (input 227, first pixel centre 1) and what it printed.

    ``layers``: (name, kernel, stride, padding). ``table``: (name, n, jump, receptive size, start) per layer,
    input first. ``units``: the (1, 1) unit's (start, centre, end) for the first layers.
    """

    layers: list[tuple[str, int, int, int]]
    table: list[tuple[str, int, int, int, float]]
    units: dict[str, tuple[float, float, float]]
    input_size: int = 227
    first_pixel_center: float = 1.0


NOTEBOOK_ALEXNET = NotebookAlexNet(
    layers=[
        ("conv1", 11, 4, 0),
        ("pool1", 3, 2, 0),
        ("conv2", 5, 1, 2),
        ("pool2", 3, 2, 0),
        ("conv3", 3, 1, 1),
        ("conv4", 3, 1, 1),
        ("conv5", 3, 1, 1),
        ("pool5", 3, 2, 0),
        ("fc6-conv", 6, 1, 0),
        ("fc7-conv", 1, 1, 0),
    ],
    table=[
        ("input", 227, 1, 1, 1.0),
        ("conv1", 55, 4, 11, 6.0),
        ("pool1", 27, 8, 19, 10.0),
        ("conv2", 27, 8, 51, 10.0),
        ("pool2", 13, 16, 67, 18.0),
        ("conv3", 13, 16, 99, 18.0),
        ("conv4", 13, 16, 131, 18.0),
        ("conv5", 13, 16, 163, 18.0),
        ("pool5", 6, 32, 195, 34.0),
        ("fc6-conv", 1, 32, 355, 114.0),
        ("fc7-conv", 1, 32, 355, 114.0),
    ],
    units={
        "conv1": (4.5, 10.0, 15.5),
        "pool1": (8.5, 18.0, 27.5),
        "conv2": (-7.5, 18.0, 43.5),
        "pool2": (0.5, 34.0, 67.5),
    },
)


# -- data --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The repository's sibling data folder (Penn Treebank, seed images). Missing: the test is skipped on a
    developer machine and fails in CI (``CI=true``), where a skip would hide the test."""
    if not SHARED.is_dir():
        message = f"shared data folder {SHARED} not present (set NNPROBE_SHARED_DIR)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def ptb_dir() -> Path | None:
    """The shared Penn Treebank folder, or None when this machine has none (servers then look elsewhere)."""
    ptb = SHARED / "data" / "ptb"
    return ptb if ptb.is_dir() else None


@pytest.fixture(scope="session")
def tiny_lm() -> Mapping[str, Any]:
    """``start_training`` keyword arguments of the tiny LSTM (read-only: ``dict(tiny_lm, epochs=3)``)."""
    return MappingProxyType(TINY_LM)


@pytest.fixture(scope="session")
def resumable_lm() -> Mapping[str, Any]:
    """``start_training`` keyword arguments of the LSTM that system tests kill, stop and resume
    (read-only: ``dict(resumable_lm, epochs=100)``)."""
    return MappingProxyType(RESUMABLE_LM)


@pytest.fixture(scope="session")
def pattern_text() -> Callable[..., str]:
    """``pattern_text(lines, offset=0)``: a corpus of 20 words a trained model predicts almost surely."""
    return _pattern_text


@pytest.fixture(scope="session")
def notebook_alexnet() -> NotebookAlexNet:
    """The seed notebook's AlexNet-style layer list and the table it printed."""
    return NOTEBOOK_ALEXNET


# -- ports, metrics, certificates --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port nobody listens on now (for metrics endpoints and server processes)."""
    return _free_port


@pytest.fixture(scope="session")
def scrape() -> Callable[[int], str]:
    """``scrape(port)``: the Prometheus text a server's metrics endpoint serves on 127.0.0.1."""

    def read(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    return read


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Any:
    """A throw-away certificate authority with server and client certificates (``tests/certs.py``)."""
    from tests.support.certs import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


# -- servers -----------------------------------------------------------------------------------------------
class ServerFactory:
    """``factory(service, tmp_path=None, **overrides) -> (server, "127.0.0.1:port")``.

    Each server binds port 0 on 127.0.0.1, runs on the CPU with its data under ``tmp_path`` (or a fresh
    folder) and reports the port it got (``server.port``). Every server started is shut down at teardown.
    """

    def __init__(self, folder: Callable[[], Path]) -> None:
        self._folder = folder
        self._servers: list[Any] = []

    def __call__(self, service: str, tmp_path: Path | None = None, **overrides: Any) -> tuple[Any, str]:
        from nnprobe_services.server import ServerConfig, create_server

        root = tmp_path if tmp_path is not None else self._folder()
        config = ServerConfig(
            service=service,
            host="127.0.0.1",
            port=0,
            device="cpu",
            data_dir=root / "data",
            cache_dir=root / "cache",
        )
        config = dataclasses.replace(config, **overrides).validate()
        server, port = create_server(config)
        self._servers.append(server)
        server.start()
        return server, f"127.0.0.1:{port}"

    def close(self) -> None:
        """Shut down every server started (immediately), waiting at most a minute for each."""
        events = [server.shutdown(0) for server in self._servers]
        for event in events:
            event.wait(60)
        self._servers.clear()


@pytest.fixture
def server_factory(tmp_path_factory) -> Iterator[ServerFactory]:
    """Start in-process servers for one test; they are shut down when it ends."""
    factory = ServerFactory(lambda: tmp_path_factory.mktemp("server"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory) -> Iterator[ServerFactory]:
    """Start in-process servers shared by a module's tests; they are shut down after its last test."""
    factory = ServerFactory(lambda: tmp_path_factory.mktemp("server"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def attention_server(module_server_factory) -> str:
    """The address of an AttentionService shared by a module."""
    return module_server_factory("attention")[1]


@pytest.fixture(scope="module")
def attention(attention_server):
    """An ``AttentionClient`` of ``attention_server`` (60 s deadline)."""
    from nnprobe import AttentionClient

    with AttentionClient(attention_server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sequence_server(module_server_factory, ptb_dir) -> str:
    """The address of a SequenceService shared by a module (the shared Penn Treebank when present)."""
    return module_server_factory("sequence", ptb_dir=ptb_dir, ptb_download_timeout=0)[1]


@pytest.fixture(scope="module")
def sequence(sequence_server):
    """A ``SequenceClient`` of ``sequence_server`` (120 s deadline)."""
    from nnprobe import SequenceClient

    with SequenceClient(sequence_server, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def vision_server(module_server_factory) -> str:
    """The address of a VisionService shared by a module (no weights downloads)."""
    return module_server_factory("vision", weights_download_timeout=0)[1]


@pytest.fixture(scope="module")
def vision(vision_server):
    """A ``VisionClient`` of ``vision_server`` (120 s deadline)."""
    from nnprobe import VisionClient

    with VisionClient(vision_server, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the suite's own (see tests/postgres.py); fails under CI=true when the
    server programs are missing, skips elsewhere."""
    from tests.support.postgres import postgres_server, server_bin

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


# -- Triton's client, in its own environment ---------------------------------------------------------------
@pytest.fixture(scope="session")
def triton() -> Callable[..., dict]:
    """``triton(scenario, **arguments) -> dict``: a scenario of ``tests/support/triton_client.py`` run with
    the real ``tritonclient[grpc]`` in .venv-triton (made on first use by ``scripts/triton_env.py``)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    made = subprocess.run(
        [sys.executable, str(root / "scripts" / "triton_env.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if made.returncode != 0:
        pytest.fail(f"could not make .venv-triton: {made.stderr[-2000:]}")
    python = made.stdout.strip().splitlines()[-1]

    def run(scenario: str, **arguments: Any) -> dict:
        done = subprocess.run(
            [python, str(root / "tests" / "support" / "triton_client.py"), scenario],
            input=json.dumps(arguments),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{scenario} failed: {done.stderr[-3000:]}"
        return json.loads(done.stdout)

    return run
