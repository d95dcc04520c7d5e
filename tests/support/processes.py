"""Real server processes for the system suite: their environment, start and stop.

Servers run on the CPU on the loopback interface, with their data and cache folders where the test says.
Their output goes to a log file the test names (appended: a restarted server adds to it) or nowhere, never
to a pipe nobody reads (a full pipe would block the server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: Hang guard for waiting on a process; never a pass/fail threshold.
WAIT_SECONDS = 120.0


def environment(data: Path, cache: Path, **settings: str) -> dict[str, str]:
    """This process's environment plus a server's: ``NNPROBE_DATA_DIR``/``NNPROBE_CACHE_DIR``, loopback,
    the CPU, and ``settings`` (names as they are, e.g. ``NNPROBE_JOB_LEASE_SECONDS="2"``)."""
    return {
        **os.environ,
        "NNPROBE_DATA_DIR": str(data),
        "NNPROBE_CACHE_DIR": str(cache),
        "NNPROBE_HOST": "127.0.0.1",
        "NNPROBE_DEVICE": "cpu",
        **settings,
    }


def serve(
    service: str,
    port: int,
    *,
    data: Path,
    cache: Path,
    log: Path | None = None,
    flags: Sequence[str] = (),
    **settings: str,
) -> subprocess.Popen:
    """``python -m nnprobe_services.<service> --port PORT FLAGS`` with ``environment(data, cache,
    **settings)``; its output appended to ``log`` (None: discarded)."""
    command = [sys.executable, "-m", f"nnprobe_services.{service}", "--port", str(port), *flags]
    env = environment(data, cache, **settings)
    if log is None:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "a") as output:  # the child holds its own copy of the descriptor
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = WAIT_SECONDS) -> None:
    """SIGTERM (unless it has exited) and wait up to ``timeout`` seconds; then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=60)


def kill_hard(proc: subprocess.Popen, timeout: float = WAIT_SECONDS) -> None:
    """SIGKILL, as a crash or the kernel's out-of-memory killer would, and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)
