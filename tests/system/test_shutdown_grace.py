"""SIGTERM while a computation is inside one long step that never reaches a stop check.

The grace period bounds the whole shutdown: the call is answered when it ends, and the process then exits
with status 0 without waiting for the computation (a thread of the compute pool would otherwise hold the
interpreter's exit until the step ends, which can be far past the grace period: SIGKILL under Kubernetes).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc
import pytest
from nnprobe import AttentionClient, NnprobeError

pytestmark = pytest.mark.system

#: An attention server whose feed-forward check is one step without end (it ignores its stop signal).
ENDLESS_STEP = """
import sys, threading
from nnprobe_services.attention import workflow as plans

def endless(plan, device, should_stop):
    print("endless step started", flush=True)
    threading.Event().wait()

plans.run_feed_forward = endless
from nnprobe_services.server.service_main import main
sys.exit(main("attention", sys.argv[1:]))
"""


def test_sigterm_ends_the_process_with_status_zero_when_a_step_outlasts_the_grace(
    tmp_path, free_port, server_processes
):
    port = free_port()
    proc = server_processes.start(
        [sys.executable, "-c", ENDLESS_STEP, "--port", str(port), "--grace-seconds", "1"], tmp_path
    )
    lines: list[str] = []
    started = threading.Event()

    def read_output() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "endless step started" in line:
                started.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    outcome: dict[str, BaseException] = {}
    with AttentionClient(f"127.0.0.1:{port}", timeout=300) as client:
        client.wait_until_ready(timeout=60)

        def call() -> None:
            try:
                client.check_feed_forward_equivalence()
            except NnprobeError as error:
                outcome["error"] = error

        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(timeout=60), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(lines)
        caller.join(timeout=60)
    reader.join(timeout=10)
    text = "".join(lines)
    assert isinstance(outcome.get("error"), NnprobeError)
    assert outcome["error"].code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert "CheckFeedForwardEquivalence CANCELLED" in text
    assert "1 computation(s) of ended calls had not reached their next stop check" in text
    assert "Traceback" not in text


def test_a_second_sigterm_after_the_shutdown_does_not_change_the_exit_status(
    tmp_path, free_port, server_processes
):
    port = free_port()
    proc = server_processes.start(
        [sys.executable, "-m", "nnprobe_services.attention", "--port", str(port)], tmp_path
    )
    lines: list[str] = []
    stopped = threading.Event()

    def read_output() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "nnprobe.server: stopped" in line:
                stopped.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    with AttentionClient(f"127.0.0.1:{port}", timeout=60) as client:
        client.wait_until_ready(timeout=60)
        assert client.check_permutation_equivariance(sequence_length=3, model_dim=4).holds
    proc.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60), "".join(lines)
    # More signals, all through the interpreter's exit (each a no-op once the process has ended).
    for _ in range(6000):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=0.01)
            break
        except subprocess.TimeoutExpired:
            continue
    assert proc.wait(timeout=60) == 0, "".join(lines)
    reader.join(timeout=10)
