import ast
import dataclasses
import importlib.metadata
import os
import re
import typing
from pathlib import Path

import pytest
from nnprobe_services.server.config import ServerConfig, load_config
from nnprobe_services.server.settings import FIELD_SECTIONS, SECTIONS, AttentionSettings, env_name


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
    from nnprobe_services.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# -- settings in sections ----------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[3]
ALL_FIELDS = [
    (section, name, field) for section, cls in SECTIONS.items() for name, field in cls.model_fields.items()
]


def test_setting_names_are_unique_across_sections_and_each_has_a_description_and_a_default():
    names = [name for _, name, _ in ALL_FIELDS]
    assert len(names) == len(set(names)), "a flat name must find exactly one section"
    assert set(names) == set(FIELD_SECTIONS) and "service" not in names
    assert list(SECTIONS) == ["common", "vision", "sequence", "attention"]
    for section, name, field in ALL_FIELDS:
        assert field.description and field.description.strip(), f"{section}.{name} has no description"
        assert not field.is_required(), f"{section}.{name} has no default"


def test_sections_are_the_structure_and_flat_names_read_and_build_them():
    config = load_config("vision", ["--batch-queue-size", "7", "--device", "cpu"], {})
    assert config.common.port == config.port == 50051
    assert config.vision.batch_queue_size == config.batch_queue_size == 7
    assert config.common.device == config.device == "cpu"
    assert config.attention.max_permutations == config.max_permutations == 1_000_000
    built = ServerConfig(service="sequence", device="cpu", max_queued_jobs=3, max_permutations=9, port=0)
    assert (built.common.device, built.sequence.max_queued_jobs, built.attention.max_permutations) == (
        "cpu",
        3,
        9,
    )
    assert ServerConfig(service="sequence").port == 50052  # unset port: the service's own
    replaced = dataclasses.replace(built, port=5, batch_queue_size=4).validate()
    assert (replaced.port, replaced.batch_queue_size, replaced.max_queued_jobs) == (5, 4, 3)
    assert built.replace(max_sample_words=2).sequence.max_sample_words == 2
    assert built.flat()["max_queued_jobs"] == 3 and set(built.flat()) == set(FIELD_SECTIONS)
    with pytest.raises(TypeError, match="unknown settings: workers"):
        ServerConfig(service="vision", workers=3)
    with pytest.raises(AttributeError):
        _ = built.no_such_setting
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.service = "vision"  # type: ignore[misc]


def _samples(tmp_path: Path, name: str, field) -> tuple[str, str]:
    """Two valid raw values of a setting: one for its variable, one for its flag."""
    special = {
        "device": ("cpu", "cuda:1"),
        "model_weights": ("a=/w/a.pth", "b=/w/b.pth"),
        "database_url": ("sqlite:///a.db", "sqlite:///b.db"),
        "job_lease_seconds": ("40", "50"),
    }
    if name in special:
        return special[name]
    kinds = {
        typing.get_args(k)[0] if typing.get_origin(k) is typing.Annotated else k
        for k in typing.get_args(field.annotation) or (field.annotation,)
    }
    if typing.get_origin(field.annotation) is typing.Literal:
        values = typing.get_args(field.annotation)
        return values[-1], values[-2]
    if bool in kinds:
        return "false", "true"
    if int in kinds or float in kinds:
        return "7", "8"
    if Path in kinds:
        made = []
        for suffix in ("env", "flag"):
            path = tmp_path / f"{name}-{suffix}"
            path.mkdir() if name.endswith("_dir") else path.write_text("token\n")
            made.append(str(path))
        return made[0], made[1]
    return f"{name}-env", f"{name}-flag"


def _parsed(config: ServerConfig, name: str, raw: str) -> bool:
    value = getattr(config, name)
    if isinstance(value, bool):
        return value == (raw == "true")
    if isinstance(value, int | float | Path):
        return value == type(value)(raw)
    return value == raw


def test_every_setting_reads_its_variable_and_its_flag_with_flags_over_variables(tmp_path):
    samples = {name: _samples(tmp_path, name, field) for _, name, field in ALL_FIELDS}
    env = {env_name(name): pair[0] for name, pair in samples.items()}
    argv = [arg for name, pair in samples.items() for arg in ("--" + name.replace("_", "-"), pair[1])]
    from_env = load_config("sequence", [], env)
    from_flags = load_config("sequence", argv, env)
    for name, (env_value, flag_value) in samples.items():
        assert _parsed(from_env, name, env_value), (name, getattr(from_env, name), env_value)
        assert _parsed(from_flags, name, flag_value), (name, getattr(from_flags, name), flag_value)


def _help_of(run) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 0
    return out.getvalue()


def _check_help(text: str, port_default: str) -> None:
    """Every setting under its section's heading, with its flag, variable, description and default."""
    from nnprobe_services.server.settings.flags import default_text

    squeezed = "".join(text.split())  # argparse wraps lines (and breaks words at hyphens)
    headings = [squeezed.index(f"{section}settings:") for section in SECTIONS]
    assert headings == sorted(headings), "sections in order"
    bounds = dict(zip(SECTIONS, [*headings[1:], len(squeezed)], strict=True))
    for section, name, field in ALL_FIELDS:
        start = squeezed.index(f"{section}settings:")
        block = squeezed[start : bounds[section]]
        entry = block[block.index("--" + name.replace("_", "-")) :]
        assert "".join(field.description.split()) in entry, (section, name)
        default = port_default if name == "port" else default_text(name, field)
        value = field.get_default(call_default_factory=True)
        if name != "port":
            assert default == (
                "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            )
        assert "".join(f"[{env_name(name)}; default: {default}]".split()) in entry, (section, name)


def test_help_lists_every_setting_by_section_with_its_variable_description_and_default():
    from nnprobe.cli import main as cli_main
    from nnprobe_services.server.service_main import main as service_main

    _check_help(
        _help_of(lambda: cli_main(["serve", "--help"])), "vision 50051, sequence 50052, attention 50053"
    )
    _check_help(_help_of(lambda: service_main("vision", ["--help"])), "50051")
    _check_help(_help_of(lambda: service_main("sequence", ["--help"])), "50052")


def test_python_m_help_runs_without_starting_a_server():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "nnprobe_services.attention", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "attention settings:" in result.stdout and "NNPROBE_MAX_PERMUTATIONS" in result.stdout
    assert "50053" in result.stdout


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"NNPROBE_WEIGHTS_DIR": "/no/such/folder"}, [], "weights_dir: no such folder /no/such/folder"),
        ({"NNPROBE_TLS_CERT": "/no/cert", "NNPROBE_TLS_KEY": "/no/key"}, [], "tls_cert: no such file"),
        ({"NNPROBE_TLS_CERT": "/no/cert"}, [], "tls_cert and tls_key must be given together"),
        (
            {},
            ["--batch-max-delay-ms", "70000"],
            "--batch-max-delay-ms='70000': batch_max_delay_ms must be in 0..60000",
        ),
        ({}, ["--transfer-connect-timeout", "-1"], "transfer_connect_timeout must be in 0..3600"),
        ({"NNPROBE_DATABASE_URL": "mysql://x"}, [], "database_url must start with one of"),
        ({"NNPROBE_JOB_POLL_SECONDS": "20"}, [], "must be at most half of job_lease_seconds"),
        ({"NNPROBE_MODEL_WEIGHTS": "alexnet"}, [], "model_weights entries are name=path"),
        ({"NNPROBE_DEFAULT_MODEL": " "}, [], "default_model must not be empty"),
        (
            {"NNPROBE_MAX_IMAGE_BYTES": "0"},
            [],
            "NNPROBE_MAX_IMAGE_BYTES='0': max_image_bytes must be positive",
        ),
        ({"NNPROBE_DYNAMIC_BATCHING": "maybe"}, [], "NNPROBE_DYNAMIC_BATCHING='maybe': dynamic_batching"),
        ({"NNPROBE_REPLICA_ID": " "}, [], "replica_id must not be empty"),
        ({}, ["--port", "x"], "--port='x': port"),
    ],
)
def test_each_setting_is_checked_and_the_error_names_it_and_where_it_came_from(env, argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("vision", argv, env)


def test_choices_are_checked_by_the_command_line():
    with pytest.raises(SystemExit):
        load_config("vision", ["--builtin-backend", "tensorrt"], {})
    with pytest.raises(ValueError, match="builtin_backend must be one of"):
        load_config("vision", [], {"NNPROBE_BUILTIN_BACKEND": "tensorrt"})


def test_a_section_alone_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("NNPROBE_MAX_PERMUTATIONS", "5")
    assert AttentionSettings().max_permutations == 5
    assert AttentionSettings(max_permutations=6).max_permutations == 6


def test_serve_all_gives_each_server_its_port_and_metrics_port(monkeypatch):
    from nnprobe_services.server import serve_command

    for key in [k for k in os.environ if k.startswith("NNPROBE_")]:
        monkeypatch.delenv(key)
    parse = serve_command.build_parser().parse_args
    configs = serve_command.configs_for(parse(["all", "--port", "6000", "--metrics-port", "9000"]))
    assert [(c.service, c.port, c.metrics_port) for c in configs] == [
        ("vision", 6000, 9000),
        ("sequence", 6001, 9001),
        ("attention", 6002, 9002),
    ]
    assert [c.port for c in serve_command.configs_for(parse(["all"]))] == [50051, 50052, 50053]
    assert [c.port for c in serve_command.configs_for(parse(["sequence", "--port", "7"]))] == [7]


def test_the_sdk_finds_serve_through_the_services_entry_point(monkeypatch, capsys):
    from nnprobe.cli import main as cli_main
    from nnprobe.cli import serve as serve_cli
    from nnprobe_services.server import serve_command

    (entry,) = importlib.metadata.entry_points(group=serve_cli.ENTRY_POINT_GROUP, name="serve")
    assert entry.load() is serve_command.main and entry.dist.name == "nnprobe-services"
    assert cli_main(["serve", "vision", "--port", "x"]) == 2
    assert "--port='x'" in capsys.readouterr().err
    monkeypatch.setattr(serve_cli.importlib.metadata, "entry_points", lambda **_: [])
    assert cli_main(["serve", "attention", "--port", "1"]) != 0
    message = capsys.readouterr().err.strip()
    assert "\n" not in message
    assert "nnprobe serve needs the nnprobe-services distribution: pip install nnprobe-services" in message


def test_the_sdk_imports_nothing_from_the_services():
    offenders = []
    for path in sorted((REPO / "sdk" / "nnprobe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "nnprobe_services"]
    assert offenders == []
