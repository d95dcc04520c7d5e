"""Real server processes: start, answer, CLI against them, SIGTERM. Everything started is torn down."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from nnprobe import AttentionClient, NnprobeError, SequenceClient, VisionClient

pytestmark = pytest.mark.system
BIN = Path(sys.executable).parent


def test_module_entry_point_serves_cli_and_stops_on_sigterm(tmp_path, free_port, server_processes):
    port = free_port()
    proc = server_processes.start(
        [sys.executable, "-m", "nnprobe_services.attention", "--port", str(port), "--log-format", "json"],
        tmp_path,
    )
    address = f"127.0.0.1:{port}"
    try:
        with AttentionClient(address) as client:
            client.wait_until_ready(timeout=60)
            assert client.health() == "SERVING"
        cli = subprocess.run(
            [
                str(BIN / "nnprobe"),
                "attention",
                "equivariance",
                "-T",
                "5",
                "-D",
                "8",
                "--json",
                "--address",
                address,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result = json.loads(cli.stdout)
        assert result["holds"] is True and result["permutations_checked"] == 120
        assert result["max_deviation"] <= 1e-12
        bad = subprocess.run(
            [str(BIN / "nnprobe"), "attention", "equivariance", "-T", "0", "--address", address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "sequence_length" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        out = server_processes.stop(proc)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry.get("method")]
    assert {r["status"] for r in requests} == {"OK", "INVALID_ARGUMENT"}
    assert all(r["duration_ms"] >= 0 for r in requests)
    assert any("draining" in entry["message"] for entry in lines)


def test_in_flight_call_completes_during_sigterm_and_new_calls_are_refused(
    tmp_path, free_port, server_processes
):
    port = free_port()
    proc = server_processes.start(
        [
            sys.executable,
            "-m",
            "nnprobe_services.attention",
            "--port",
            str(port),
            "--log-level",
            "debug",
            "--grace-seconds",
            "60",
        ],
        tmp_path,
    )
    address = f"127.0.0.1:{port}"
    lines: list[str] = []
    call_started, draining = threading.Event(), threading.Event()

    def read_output() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "CheckPermutationEquivariance started" in line:
                call_started.set()
            if "draining" in line:
                draining.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        with AttentionClient(address, timeout=120) as client:
            client.wait_until_ready(timeout=60)
            outcome: dict = {}

            def long_call() -> None:
                outcome["result"] = client.check_permutation_equivariance(
                    sequence_length=32, model_dim=64, strategy="sampled", num_samples=100_000
                )

            thread = threading.Thread(target=long_call)
            thread.start()
            assert call_started.wait(timeout=60), "".join(lines)
            proc.send_signal(signal.SIGTERM)
            assert draining.wait(timeout=60), "".join(lines)  # the late call below comes after the stop
            thread.join(timeout=120)
            assert outcome["result"].holds and outcome["result"].permutations_checked == 100_000 + 32
        with AttentionClient(address, timeout=5) as late, pytest.raises(NnprobeError) as info:
            late.check_feed_forward_equivalence()
        assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)
    text = "".join(lines)
    assert text.index("draining") < text.index("CheckPermutationEquivariance OK")


def test_serve_all_starts_three_servers_that_answer_health(tmp_path, free_port, server_processes):
    base = free_port()
    while any(not _port_free(base + i) for i in range(3)):
        base = free_port()
    proc = server_processes.start([str(BIN / "nnprobe"), "serve", "all", "--port", str(base)], tmp_path)
    try:
        for offset, client_type in enumerate((VisionClient, SequenceClient, AttentionClient)):
            with client_type(f"127.0.0.1:{base + offset}") as client:
                client.wait_until_ready(timeout=120)
                assert client.health() == "SERVING"
        health = subprocess.run(
            [str(BIN / "nnprobe"), "health", "attention", "--address", f"127.0.0.1:{base + 2}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0 and json.loads(health.stdout)[0]["status"] == "SERVING"
    finally:
        out = server_processes.stop(proc)
    assert proc.returncode == 0, out


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_bad_configuration_exits_with_a_clear_message(tmp_path, server_processes):
    command = [sys.executable, "-m", "nnprobe_services.attention", "--device", "tpu"]
    proc = server_processes.start(command, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "device must be auto, cpu, cuda or cuda:N" in out and "Traceback" not in out
