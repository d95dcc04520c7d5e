"""Fixtures of the system suite: real server processes, each stopped (SIGTERM, then SIGKILL) at teardown.
(``tests/processes.py`` starts servers whose output goes to a log file.)"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import environment


class ServerProcesses:
    """``start(args, tmp_path) -> Popen`` runs a server process on the CPU with its data under ``tmp_path``
    (output captured in ``proc.stdout``, for tests that read it as it comes; keep such servers short-lived:
    a full pipe blocks them); ``stop(proc) -> output`` sends SIGTERM and waits (a minute at most, then
    kills)."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen] = []

    def start(self, args: list[str], tmp_path: Path) -> subprocess.Popen:
        env = environment(tmp_path / "data", tmp_path)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen) -> str:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return out or ""

    def close(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                self.stop(proc)
        self._started.clear()


@pytest.fixture
def server_processes() -> Iterator[ServerProcesses]:
    """Start real server processes for one test; any still running are stopped when it ends."""
    processes = ServerProcesses()
    yield processes
    processes.close()
