"""The SDK installed alone in a fresh virtual environment (``pip install ./sdk``: no torch, no Pillow, no
server package) runs every CLI command against in-process servers; a command that needs an extra says so in
one line before any RPC, and works once the extra is installed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import venv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.system
SDK = Path(__file__).resolve().parents[2] / "sdk"


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """No PYTHONPATH or virtualenv of the test run leaks in; pip's own settings (index, cache) do."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "TMPDIR")}
    return {**keep, "PATH": f"{bin_dir}:/usr/bin:/bin", **extra}


def pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        check=True,
        timeout=600,
        env=clean_env(python.parent),
    )


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    """The ``bin`` folder of a venv holding only the SDK and its declared dependencies."""
    root = tmp_path_factory.mktemp("sdk-alone")
    venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    pip(bin_dir / "python", str(SDK))
    return bin_dir


@pytest.fixture(scope="module")
def servers(module_server_factory) -> dict[str, str]:
    return {
        name: module_server_factory(name, weights_download_timeout=0.0)[1]
        for name in ("vision", "sequence", "attention")
    }


def run(bin_dir: Path, servers: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = clean_env(
        bin_dir,
        NNPROBE_VISION_ADDR=servers["vision"],
        NNPROBE_SEQUENCE_ADDR=servers["sequence"],
        NNPROBE_ATTENTION_ADDR=servers["attention"],
    )
    result = subprocess.run(
        [str(bin_dir / "nnprobe"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    if ok:
        assert result.returncode == 0, f"nnprobe {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_environment_holds_the_sdk_alone(alone):
    probe = "import importlib.util as u; print([m for m in OPTIONAL if u.find_spec(m)])"
    probe = probe.replace("OPTIONAL", repr(("torch", "PIL", "nnprobe_services")))
    out = subprocess.run(
        [str(alone / "python"), "-c", probe], capture_output=True, text=True, timeout=60, env=clean_env(alone)
    )
    assert out.stdout.strip() == "[]", out


def test_every_command_runs_from_the_sdk_alone(alone, servers, tmp_path, tiny_lm, pattern_text):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)

    def nnprobe(*args: str) -> Any:
        return json.loads(run(alone, servers, *args, "--json").stdout)

    health = run(alone, servers, "health").stdout
    assert health.count("SERVING") == 3, health
    assert [m["name"] for m in nnprobe("models") if m["is_default"]] == ["efficientnet_lite0"]
    field = nnprobe("rf", "--layers", "c1:k3,s1,p1", "c2:k3,s2,p1", "--input-size", "8")["layers"][-1]
    # closed form: r = 1 + 2 + 2 x 1 = 5, jump 2, (8 + 2 - 3) // 2 + 1 = 4 units
    assert (field["height"]["receptive_size"], field["height"]["jump"], field["height"]["size"]) == (5, 2, 4)
    assert len(nnprobe("classify", str(photo))["results"][0]["top"]) == 5
    attack = nnprobe("attack", str(photo), "--untargeted", "--method", "fgsm", "--eps", "4/255")
    assert attack["results"][0]["linf"] <= 4 / 255 + 1e-9
    equivariance = nnprobe("attention", "equivariance", "-T", "4", "-D", "8")
    assert equivariance["holds"] is True and equivariance["permutations_checked"] == 24  # 4!
    assert nnprobe("attention", "pooling", "-T", "4", "-D", "8")["holds"] is True
    assert nnprobe("attention", "ffn", "-D", "8")["equivalent"] is True
    assert np.asarray(nnprobe("rnn", "forward", "-T", "5", "-D", "3", "-H", "4")["hidden_states"]).shape == (
        5,
        1,
        4,
    )
    runs = nnprobe("rnn", "gradients", "-T", "6", "-H", "4", "--rho", "1.0")["runs"]
    assert [r["spectral_radius"] for r in runs] == [pytest.approx(1.0)]
    points = nnprobe("rnn", "truncation", "-K", "1", "2", "-L", "4", "-H", "4")["points"]
    assert {(p["chunk_count"], p["mode"]) for p in points} == {
        (k, m) for k in (1, 2) for m in ("truncated", "full")
    }

    splits = {}
    for split, text in (
        ("train", pattern_text(120)),
        ("valid", pattern_text(20, 120)),
        ("test", pattern_text(5)),
    ):
        splits[split] = tmp_path / f"{split}.txt"
        splits[split].write_text(text)
    corpus = nnprobe("lm", "upload", str(splits["train"]), "--valid", str(splits["valid"]))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_lm.items() if k != "learning_rate"]
    job = nnprobe("lm", "train", "--corpus", corpus["corpus_id"], "--max-steps", "10", *options)["job_id"]
    watched = nnprobe("lm", "watch", job)
    assert watched["job"]["state"] == "succeeded" and watched["events"][-1]["state"] == "succeeded"
    assert [j["job_id"] for j in nnprobe("lm", "jobs")] == [job]
    table = run(alone, servers, "lm", "job", job).stdout
    assert "test perplexity   n/a" in table  # no test split: not a perplexity of 0
    assert nnprobe("lm", "perplexity", job, "--batch-size", "1")["tokens"] == 20 * 7 - 1
    greedy = nnprobe("lm", "sample", job, "--start-id", "0", "-n", "6", "--greedy")["words"]
    cold = nnprobe("lm", "sample", job, "--start-id", "0", "-n", "6", "--temperature", "0", "--seed", "4")
    assert cold["words"] == greedy
    assert nnprobe("lm", "distance", "w1", "w2", "--job", job)["euclidean"] > 0
    assert len(nnprobe("lm", "nearest", "w1", "--job", job, "-k", "3")["neighbors"]) == 3
    refused = run(alone, servers, "lm", "cancel", job, ok=False)
    assert refused.returncode != 0 and "FAILED_PRECONDITION" in refused.stderr + refused.stdout
    refused = run(alone, servers, "lm", "resume", job, ok=False)
    assert refused.returncode != 0 and "FAILED_PRECONDITION" in refused.stderr + refused.stdout

    serve = run(alone, servers, "serve", "attention", ok=False)
    assert serve.returncode != 0 and "pip install nnprobe-services" in serve.stderr + serve.stdout


def test_an_extra_is_checked_before_any_rpc_then_works_once_installed(alone, servers, tmp_path):
    photo = tmp_path / "photo.png"
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    photo.write_bytes(buffer.getvalue())
    nowhere = {"vision": "127.0.0.1:9", "sequence": "127.0.0.1:9", "attention": "127.0.0.1:9"}
    args = ("attack", str(photo), "--untargeted", "--method", "fgsm", "--save-dir", str(tmp_path / "out"))
    refused = run(alone, nowhere, *args, ok=False)  # no server at all: only a pre-RPC check can answer
    message = (refused.stderr + refused.stdout).strip()
    assert refused.returncode != 0 and "Traceback" not in message
    assert message.count("\n") == 0 and "pip install 'nnprobe[images]'" in message, message
    assert not (tmp_path / "out").exists()

    pip(alone / "python", f"{SDK}[images]")
    run(alone, servers, *args)
    saved = list((tmp_path / "out").glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (3 * 224 + 8, 224)
