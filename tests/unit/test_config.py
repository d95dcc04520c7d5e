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
    config = load_config("attention", ["--port", "7000", "--device", "cuda:1", "--workers", "3"], env)
    assert (config.port, config.device, config.workers) == (7000, "cuda:1", 3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNPROBE_PORT": "abc"}, "NNPROBE_PORT='abc'"),
        ({"NNPROBE_PORT": "70000"}, "port must be in 0..65535"),
        ({"NNPROBE_DEVICE": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"NNPROBE_WORKERS": "0"}, "workers must be positive"),
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
