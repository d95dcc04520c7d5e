"""The model repository, its configs and safe loading: a small CNN made here, exported to ONNX and to a
torch.export archive; served logits against onnxruntime and PyTorch computed here; hostile uploads refused
with the field named and nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models import repository, store

from tests.support import tiny_cnn

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def net():
    return tiny_cnn.network()


@pytest.fixture(scope="module")
def files(net):
    return {"onnx": tiny_cnn.onnx_bytes(net), "pt2": tiny_cnn.pt2_bytes(net)}


@pytest.fixture
def repo(tmp_path):
    return repository.ModelRepository(tmp_path / "models", max_model_bytes=LIMIT)


def upload(
    repo, models, name, data, fmt="onnx", *, config=tiny_cnn.CONFIG_YAML, labels=None, sha=None, size=None
):
    labels = "\n".join(tiny_cnn.LABELS) if labels is None else labels
    pending = repo.begin_upload(
        name,
        fmt=fmt,
        size=len(data) if size is None else size,
        sha256=sha or tiny_cnn.sha256(data),
        config_yaml=config,
        labels=labels,
    )
    pending.write(data)
    return repo.install(pending, models.validate)


def nothing_left(repo, name: str) -> None:
    assert list((repo.root / repository.STAGING).iterdir()) == []
    assert not (repo.root / name).exists() if model_config.NAME_PATTERN.fullmatch(name) else True


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_served_logits_equal_the_engines_run_here(repo, net, files, fmt):
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    installed = upload(repo, models, f"tiny-{fmt}", files[fmt], fmt)
    assert installed.version == 1 and installed.path.name == f"model.{fmt}"
    loaded = models.get(f"tiny-{fmt}")
    pixels = torch.rand(3, 3, tiny_cnn.SIDE, tiny_cnn.SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(tiny_cnn.normalised(pixels)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(installed.path), providers=["CPUExecutionProvider"])
        direct = session.run(None, {"x": ((pixels.numpy() - tiny_cnn.MEAN) / tiny_cnn.STD)})[0]
        np.testing.assert_allclose(loaded.predict(pixels).numpy(), direct, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(pixels).numpy(), expected, atol=1e-5)
    assert loaded.labels == tiny_cnn.LABELS and loaded.record.num_classes == tiny_cnn.CLASSES
    assert loaded.backend.name == ("onnxruntime" if fmt == "onnx" else "pytorch")
    # Gradients through the served module equal autograd through the original network.
    a = pixels.clone().requires_grad_(True)
    loaded.module(a)[:, 2].sum().backward()
    b = pixels.clone().requires_grad_(True)
    net(tiny_cnn.normalised(b))[:, 2].sum().backward()
    assert a.grad is not None and b.grad is not None
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-6)


def test_versions_restart_replicas_and_delete(repo, files):
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    upload(repo, models, "tiny", files["onnx"])
    second = upload(repo, models, "tiny", files["pt2"], "pt2", config="", labels="")
    assert second.version == 2 and second.format == "pt2"
    # A second process on the same folder (a restart, or a replica) sees both versions.
    again = repository.ModelRepository(repo.root, max_model_bytes=LIMIT)
    entry = again.get("tiny")
    assert [v.version for v in entry.versions] == [1, 2] and entry.default_version.version == 2
    assert entry.labels == tiny_cnn.LABELS
    replica = store.ModelStore(torch.device("cpu"), repository=again)
    assert replica.get("tiny", 1).backend.name == "onnxruntime"
    with pytest.raises(NotFound) as missing:
        replica.get("tiny", 7)
    assert missing.value.field == "model_version"
    with pytest.raises(FailedPrecondition) as other_config:
        upload(
            repo,
            models,
            "tiny",
            files["onnx"],
            config=tiny_cnn.CONFIG_YAML.replace("16}", "16, channel_order: bgr}"),
        )
    assert other_config.value.field == "metadata.config_yaml"
    assert again.delete("tiny", 1) == [1]
    assert [v.version for v in repo.get("tiny").versions] == [2]
    assert again.delete("tiny") == [2]
    assert repo.names() == [] and list((repo.root / repository.TRASH).iterdir()) == []
    with pytest.raises(NotFound):
        repo.delete("tiny")


def test_a_graph_with_a_fixed_batch_of_one_is_served_one_image_at_a_time(repo, net):
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.rand(1, 3, 16, 16),), buffer, dynamo=False, opset_version=17, input_names=["x"]
    )
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    upload(repo, models, "fixed", buffer.getvalue())
    loaded = models.get("fixed")
    assert loaded.max_batch == 1
    pixels = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded.predict(pixels).numpy(), net(tiny_cnn.normalised(pixels)).numpy(), atol=1e-5
        )


def test_an_op_without_a_pytorch_conversion_is_named(repo):
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    upload(repo, models, "shrink", tiny_cnn.onnx_graph(op="Shrink"))
    loaded = models.get("shrink")
    assert loaded.predict(torch.rand(1, 3, 16, 16)).shape == (1, tiny_cnn.CLASSES)
    with pytest.raises(FailedPrecondition) as refused:
        loaded.module  # noqa: B018 -- the conversion happens on first use
    assert "Shrink (opset 17)" in refused.value.message and refused.value.field == "model"


HOSTILE = {
    "pickled .pt": (lambda net, files: tiny_cnn.pickle_bytes(net), "pt2", InvalidArgument, "pickle"),
    "TorchScript": (
        lambda net, files: tiny_cnn.torchscript_bytes(net),
        "pt2",
        InvalidArgument,
        "TorchScript",
    ),
    "raw pickle": (lambda net, files: b"\x80\x04\x95" + b"\x00" * 40, "onnx", InvalidArgument, "pickle"),
    "external data outside": (
        lambda net, files: tiny_cnn.onnx_graph(external="../../secret.bin"),
        "onnx",
        InvalidArgument,
        "outside the model's folder",
    ),
    "external data absolute": (
        lambda net, files: tiny_cnn.onnx_graph(external="/etc/hostname"),
        "onnx",
        InvalidArgument,
        "outside the model's folder",
    ),
    "corrupt": (lambda net, files: bytes(range(256)) * 8, "onnx", InvalidArgument, "ONNX"),
    "pt2 with a library": (
        lambda net, files: tiny_cnn.rewrite_zip(files["pt2"], add={"data/aotinductor/model.so": b"\x7fELF"}),
        "pt2",
        InvalidArgument,
        "aotinductor",
    ),
    "pt2 with pickled weights": (
        lambda net, files: tiny_cnn.pickled_weights_pt2(files["pt2"]),
        "pt2",
        InvalidArgument,
        "pickles",
    ),
    "pt2 calling outside torch ops": (
        lambda net, files: tiny_cnn.rewrite_zip(
            files["pt2"],
            edit=lambda n, c: (
                c.replace(b"torch.ops.aten.relu.default", b"torch.os.getcwd")
                if n.endswith("model.json")
                else c
            ),
        ),
        "pt2",
        InvalidArgument,
        "getcwd",
    ),
    "wrong input size": (
        lambda net, files: files["onnx"][:0] + tiny_cnn.onnx_graph(op="Relu"),
        "onnx",
        None,
        "",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_uploads_are_refused_and_leave_nothing(repo, net, files, kind):
    make, fmt, error, words = HOSTILE[kind]
    data = make(net, files)
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    config = tiny_cnn.CONFIG_YAML
    if error is None:  # a valid graph whose input is not the configured size
        config, error, words = config.replace("height: 16", "height: 15"), InvalidArgument, "(N, 3, 15, 16)"
    with pytest.raises(error) as refused:
        upload(repo, models, "hostile", data, fmt, config=config)
    assert words in refused.value.message and refused.value.field in ("chunk", "file", "metadata.config_yaml")
    nothing_left(repo, "hostile")


@pytest.mark.parametrize(
    ("case", "error", "field"),
    [
        ("truncated", InvalidArgument, "chunk"),
        ("oversized", ResourceExhausted, "metadata.size_bytes"),
        ("longer than declared", ResourceExhausted, "chunk"),
        ("wrong sha256", InvalidArgument, "metadata.sha256"),
        ("../x", InvalidArgument, "metadata.name"),
        ("labels count", InvalidArgument, "metadata.labels"),
    ],
)
def test_broken_transfers_are_refused_and_leave_nothing(repo, files, case, error, field):
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    data, name, kwargs = files["onnx"], "broken", {}
    if case == "truncated":
        kwargs = {"size": len(data) + 10, "sha": tiny_cnn.sha256(data + b"\0" * 10)}
    elif case == "oversized":
        kwargs = {"size": LIMIT + 1}
    elif case == "longer than declared":
        kwargs = {"size": len(data) - 1}
    elif case == "wrong sha256":
        kwargs = {"sha": "0" * 64}
    elif case == "../x":
        name = "../x"
    else:
        kwargs = {"labels": "one\ntwo"}
    with pytest.raises(error) as refused:
        upload(repo, models, name, data, **kwargs)
    assert refused.value.field == field
    nothing_left(repo, "broken")
    assert not (repo.root.parent / "x").exists()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("input: {height: 0, width: 16}", "config.input.height"),
        ("input: {height: 16}", "config.input"),
        ("input: {height: 16, width: 16, channel_order: gbr}", "config.input.channel_order"),
        ("input: {height: 16, width: 16, value_range: [0, 2]}", "config.input.value_range"),
        ("input: {height: 16, width: 16}\npreprocessing: {std: [1, 0, 1]}", "config.preprocessing.std[1]"),
        ("input: {height: 16, width: 16}\npreprocessing: {resize: 8}", "config.preprocessing.resize"),
        ("input: {height: 16, width: 16}\nlabels: ../../etc/passwd", "config.labels"),
        ("input: {height: 16, width: 16}\ntask: detection", "config.task"),
        ("input: {height: 16, width: 16}\ncolour: red", "config"),
        ("input: {height: 16, width: 16}\ndefault_version: -1", "config.default_version"),
        ("input: [", "config"),
        ("!!python/object/apply:os.system ['true']", "config"),
    ],
)
def test_config_errors_name_the_field(text, field):
    with pytest.raises(InvalidArgument) as refused:
        model_config.parse_yaml(text)
    assert refused.value.field == field


def test_config_defaults_and_round_trip():
    config = model_config.parse_yaml("input: {height: 224, width: 200, value_range: [0, 255]}")
    assert (config.resize, config.mean, config.std, config.channel_order) == (
        224,
        (0, 0, 0),
        (1, 1, 1),
        "rgb",
    )
    assert model_config.parse_yaml(config.to_yaml()) == config


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab./\\-_~%\0 :"), min_size=0, max_size=8))
def test_accepted_names_stay_one_folder_inside_the_repository(name):
    """The path-traversal kind: any name the validator accepts is a direct, visible child of the root."""
    root = Path("/srv/models")
    try:
        model_config.check_name(name)
    except InvalidArgument:
        return
    resolved = Path(os.path.normpath(root / name))
    assert resolved.parent == root and not resolved.name.startswith(".")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-5, 10**10), st.text(max_size=6)))
def test_accepted_versions_are_positive_integer_folder_names(version):
    try:
        number = model_config.check_version(version)
    except InvalidArgument:
        return
    assert 1 <= number <= model_config.MAX_VERSION and str(number) == str(version)
