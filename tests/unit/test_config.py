import os
from pathlib import Path

import pytest
from nnprobe_services.server.config import load_config


def test_defaults_per_service():
    assert load_config("vision", [], {}).port == 50051
    assert load_config("sequence", [], {}).port == 50052
    config = load_config("attention", [], {})
    assert (config.port, config.device, config.log_format) == (50053, "auto", "text")


def test_environment_overrides_defaults_and_flags_override_environment():
    env = {
        "NNPROBE_PORT": "6000",
        "NNPROBE_DEVICE": "cpu",
        "NNPROBE_DATA_DIR": "/tmp/x",
        "NNPROBE_MAX_MESSAGE_BYTES": "1024",
        "NNPROBE_LOG_FORMAT": "json",
    }
    config = load_config("attention", [], env)
    assert (config.port, config.device, config.data_dir) == (6000, "cpu", Path("/tmp/x"))
    assert (config.max_message_bytes, config.log_format) == (1024, "json")
    argv = ["--port", "7000", "--device", "cuda:1", "--compute-workers", "3", "--compute-queue", "0"]
    config = load_config("attention", argv, env)
    assert (config.port, config.device, config.compute_workers, config.compute_queue) == (
        7000,
        "cuda:1",
        3,
        0,
    )
    argv = ["--max-concurrent-rpcs", "5"]
    config = load_config(
        "attention", argv, {"NNPROBE_COMPUTE_WORKERS": "2", "NNPROBE_MAX_CONCURRENT_RPCS": "9"}
    )
    assert (config.compute_workers, config.compute_queue, config.max_concurrent_rpcs) == (2, -1, 5)


def test_compute_defaults_pick_for_the_device_and_queue_four_per_worker(tmp_path):
    """0 workers: the device decides (CPU: the cores, at most 8; GPU: 4); -1 queue: 4 per worker."""
    from nnprobe_services.server import create_server

    config = load_config("attention", ["--port", "0", "--host", "127.0.0.1", "--device", "cpu"], {})
    assert (config.compute_workers, config.compute_queue, config.max_concurrent_rpcs) == (0, -1, 1024)
    server, _ = create_server(config)
    try:
        expected = max(1, min(8, os.cpu_count() or 1))
        assert (server.compute.workers, server.compute.queue) == (expected, 4 * expected)
        assert server.compute.limit == 5 * expected
    finally:
        server.shutdown(0).wait(60)


def test_old_workers_setting_is_gone():
    with pytest.raises(SystemExit):
        load_config("attention", ["--workers", "3"], {})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNPROBE_PORT": "abc"}, "NNPROBE_PORT='abc'"),
        ({"NNPROBE_PORT": "70000"}, "port must be in 0..65535"),
        ({"NNPROBE_DEVICE": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"NNPROBE_COMPUTE_WORKERS": "-1"}, "compute_workers must be >= 0"),
        ({"NNPROBE_COMPUTE_QUEUE": "-2"}, "compute_queue must be >= 0"),
        ({"NNPROBE_MAX_CONCURRENT_RPCS": "0"}, "max_concurrent_rpcs must be positive"),
        ({"NNPROBE_LOG_LEVEL": "loud"}, "log_level must be one of"),
    ],
)
def test_bad_settings_name_the_setting(env, message):
    with pytest.raises(ValueError, match=message):
        load_config("attention", [], env)


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch
    from nnprobe_services.server.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
