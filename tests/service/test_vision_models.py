"""Bring your own model, through the SDK: a small CNN made here, exported to ONNX and torch.export,
uploaded, classified (logits equal to onnxruntime and PyTorch run here), attacked, kept across a restart,
deleted; hostile uploads refused with clear statuses and nothing left behind."""

from __future__ import annotations

import hashlib
import io

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc
from torch import nn

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}


@pytest.fixture(scope="module")
def net():
    return tiny_cnn.network()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, net):
    root = tmp_path_factory.mktemp("byom")
    tiny_cnn.write(root / "tiny.onnx", tiny_cnn.onnx_bytes(net))
    tiny_cnn.write(root / "tiny.pt2", tiny_cnn.pt2_bytes(net))
    tiny_cnn.write(root / "shrink.onnx", tiny_cnn.onnx_graph(op="Shrink"))
    tiny_cnn.write(root / "pickled.pt", tiny_cnn.pickle_bytes(net))
    tiny_cnn.write(root / "scripted.pt2", tiny_cnn.torchscript_bytes(net))
    tiny_cnn.write(root / "outside.onnx", tiny_cnn.onnx_graph(external="../../../etc/hostname"))
    tiny_cnn.write(root / "corrupt.onnx", bytes(range(256)) * 4)
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="module")
def client(module_server_factory, repository, folder):
    _, address = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=repository, max_model_bytes=200_000
    )
    with VisionClient(address, timeout=120) as vision:
        for fmt in ("onnx", "pt2"):
            vision.upload_model(
                folder / f"tiny.{fmt}", name=f"tiny-{fmt}", config=CONFIG, labels=tiny_cnn.LABELS
            )
        yield vision


def pixels(seed: int, count: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_classify_equals_the_engines_run_here(client, net, folder, fmt):
    images = pixels(1)
    result = client.classify(list(images), model=f"tiny-{fmt}", top_k=3, skip_resize=True, return_logits=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = net(tiny_cnn.normalised(x)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
        expected_ort = session.run(None, {"x": tiny_cnn.normalised(x).numpy()})[0]
        np.testing.assert_allclose(np.stack([r.logits for r in result]), expected_ort, atol=1e-5)
    np.testing.assert_allclose(np.stack([r.logits for r in result]), expected, atol=1e-5)
    for image, row in zip(result, expected, strict=True):
        assert image.top[0].index == int(row.argmax())
        assert image.top[0].label == tiny_cnn.LABELS[int(row.argmax())]


def test_list_models_shows_backend_state_versions_and_sha256(client, folder):
    listed = {m.name: m for m in client.list_models()}
    onnx = listed["tiny-onnx"]
    assert onnx.in_repository and onnx.backend == "onnxruntime" and onnx.device == "cpu"
    assert onnx.num_labels == tiny_cnn.CLASSES and onnx.input_size == (tiny_cnn.SIDE, tiny_cnn.SIDE)
    assert [v.version for v in onnx.versions] == [1] and onnx.versions[0].format == "onnx"
    assert onnx.versions[0].sha256 == hashlib.sha256((folder / "tiny.onnx").read_bytes()).hexdigest()
    assert listed["tiny-pt2"].backend == "pytorch" and listed["tiny-pt2"].versions[0].format == "pt2"
    assert listed["efficientnet_lite0"].is_default and not listed["efficientnet_lite0"].in_repository


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_attack_on_a_user_model_succeeds_within_its_budget(client, fmt):
    (result,) = client.attack(
        [pixels(2, 1)[0]], model=f"tiny-{fmt}", method="pgd", eps=64 / 255, steps=20, step_size=0.05, top_k=2
    )
    assert result.success and result.linf <= 64 / 255 + 1e-9  # the budget, on the 8-bit lattice
    assert result.final_top[0].label in tiny_cnn.LABELS and result.final_top[0].index != result.goal_class


def test_an_onnx_op_without_a_conversion_fails_the_attack_naming_it(client, folder):
    client.upload_model(folder / "shrink.onnx", name="shrink", config=CONFIG)
    assert len(client.classify([pixels(3, 1)[0]], model="shrink", skip_resize=True)[0].top) == 5
    with pytest.raises(NnprobeError) as refused:
        client.attack([pixels(3, 1)[0]], model="shrink", steps=2)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "Shrink" in str(refused.value)


def test_an_attack_reports_the_served_engines_answer_and_transfers_need_no_gradients(client, folder):
    """Success and the final classes are those of onnxruntime (run here) on the returned 8-bit image; a
    transfer model only classifies, so an ONNX graph that onnx2torch cannot convert still serves as one."""
    import io

    import onnxruntime as ort
    from PIL import Image

    client.upload_model(folder / "shrink.onnx", name="shrink-judge", config=CONFIG)
    (result,) = client.attack(
        [pixels(5, 1)[0]],
        model="tiny-onnx",
        method="pgd",
        eps=64 / 255,
        steps=10,
        step_size=0.05,
        top_k=tiny_cnn.CLASSES,
        transfer_models=["shrink-judge"],
    )
    returned = np.asarray(Image.open(io.BytesIO(result.adversarial_png)), dtype=np.float32) / 255
    x = torch.from_numpy(returned).permute(2, 0, 1)[None]
    session = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": tiny_cnn.normalised(x).numpy()})[0][0]
    assert [c.index for c in result.final_top] == list(np.argsort(-logits, kind="stable"))
    assert result.success == (int(logits.argmax()) != result.goal_class)
    (transfer,) = result.transfers
    assert transfer.model == "shrink-judge" and not transfer.error and transfer.top1 is not None
    shrink = ort.InferenceSession(str(folder / "shrink.onnx"), providers=["CPUExecutionProvider"])
    expected = shrink.run(None, {shrink.get_inputs()[0].name: tiny_cnn.normalised(x).numpy()})[0][0]
    assert transfer.top1.index == int(expected.argmax())


def test_a_restart_keeps_the_models(client, server_factory, repository):
    _, address = server_factory("vision", weights_download_timeout=0, model_repository=repository)
    images = list(pixels(4))
    with VisionClient(address, timeout=120) as again:
        before = client.classify(images, model="tiny-pt2", skip_resize=True, return_logits=True)
        after = again.classify(images, model="tiny-pt2", skip_resize=True, return_logits=True)
    np.testing.assert_array_equal(np.stack([r.logits for r in before]), np.stack([r.logits for r in after]))


def _entries(repository):
    return sorted(p.name for p in repository.iterdir()), sorted(
        p.name for p in (repository / ".staging").iterdir()
    )


@pytest.mark.parametrize(
    ("file", "name", "code", "words"),
    [
        ("pickled.pt", "pickled", grpc.StatusCode.INVALID_ARGUMENT, "pickle"),
        ("scripted.pt2", "scripted", grpc.StatusCode.INVALID_ARGUMENT, "TorchScript"),
        ("outside.onnx", "outside", grpc.StatusCode.INVALID_ARGUMENT, "outside the model's folder"),
        ("corrupt.onnx", "corrupt", grpc.StatusCode.INVALID_ARGUMENT, "ONNX"),
        ("tiny.onnx", "../x", grpc.StatusCode.INVALID_ARGUMENT, "not a model name"),
        ("tiny.onnx", "alexnet", grpc.StatusCode.INVALID_ARGUMENT, "built-in"),
    ],
)
def test_hostile_uploads_are_refused_and_leave_nothing(client, repository, folder, file, name, code, words):
    before = _entries(repository)
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(
            folder / file, name=name, config=CONFIG, format="pt2" if ".pt" in file else "onnx"
        )
    assert refused.value.code == code and words in str(refused.value)
    assert _entries(repository) == before


def _raw_upload(client, metadata: pb.UploadModelMetadata, chunks: list[bytes]):
    stub = vision_pb2_grpc.VisionServiceStub(client._channel)
    messages = [pb.UploadModelRequest(metadata=metadata), *(pb.UploadModelRequest(chunk=c) for c in chunks)]
    return stub.UploadModel(iter(messages), timeout=60)


@pytest.mark.parametrize(
    ("case", "code", "field"),
    [
        ("wrong sha256", grpc.StatusCode.INVALID_ARGUMENT, "metadata.sha256"),
        ("truncated", grpc.StatusCode.INVALID_ARGUMENT, "chunk"),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "metadata.size_bytes"),
        ("no format", grpc.StatusCode.INVALID_ARGUMENT, "metadata.format"),
    ],
)
def test_broken_streams_are_refused_and_leave_nothing(client, repository, folder, case, code, field):
    data = (folder / "tiny.onnx").read_bytes()
    metadata = pb.UploadModelMetadata(
        name="streamed",
        format=pb.MODEL_FORMAT_ONNX,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_yaml=tiny_cnn.CONFIG_YAML,
    )
    chunks = [data[: len(data) // 2], data[len(data) // 2 :]]
    if case == "wrong sha256":
        metadata.sha256 = "f" * 64
    elif case == "truncated":
        chunks = chunks[:1]
    elif case == "oversized":
        metadata.size_bytes = 10**9
    else:
        metadata.format = pb.MODEL_FORMAT_UNSPECIFIED
    before = _entries(repository)
    with pytest.raises(grpc.RpcError) as refused:
        _raw_upload(client, metadata, chunks)
    assert refused.value.code() == code and field in refused.value.details()
    assert _entries(repository) == before


def test_delete_removes_a_model_and_built_ins_stay(client, folder):
    client.upload_model(folder / "tiny.onnx", name="doomed", config=CONFIG)
    assert client.upload_model(folder / "tiny.pt2", name="doomed").version == 2
    assert client.delete_model("doomed", version=1) == [1]
    assert client.delete_model("doomed") == [2]
    with pytest.raises(NnprobeError) as gone:
        client.classify([pixels(5, 1)[0]], model="doomed", skip_resize=True)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NnprobeError) as built_in:
        client.delete_model("alexnet")
    assert built_in.value.code == grpc.StatusCode.FAILED_PRECONDITION


class FixedBatch(nn.Module):
    """The tiny CNN with its logits reshaped to (1, classes): a graph that only takes a batch of one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(1, tiny_cnn.CLASSES)


def fixed_batch_bytes(net: nn.Module, fmt: str) -> bytes:
    one = torch.rand(1, 3, tiny_cnn.SIDE, tiny_cnn.SIDE)
    buffer = io.BytesIO()
    if fmt == "onnx":
        torch.onnx.export(net, (one,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    else:
        torch.export.save(torch.export.export(net, (one,)), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_attack_on_several_images_runs_a_fixed_batch_graph_one_image_at_a_time(client, net, folder, fmt):
    """A graph exported for a batch of one is attacked on three images at once (gradients included), and
    each result is the 8-bit image an attack on that image alone returns, judged as onnxruntime / PyTorch
    (run here) classify it."""
    from PIL import Image

    fixed = FixedBatch(net).eval()
    path = tiny_cnn.write(folder / f"fixed.{fmt}", fixed_batch_bytes(fixed, fmt))
    name = f"fixed-{fmt}"
    client.upload_model(path, name=name, config=CONFIG, labels=tiny_cnn.LABELS)
    images = list(pixels(7, 3))
    options = dict(model=name, method="bim", eps=8 / 255, steps=3, step_size=2 / 255, refine_steps=4)
    together = list(client.attack(images, top_k=tiny_cnn.CLASSES, **options))
    alone = [client.attack([image], top_k=tiny_cnn.CLASSES, **options)[0] for image in images]
    assert len(together) == 3
    for many, one in zip(together, alone, strict=True):
        assert many.adversarial_png == one.adversarial_png and many.success == one.success
        returned = np.asarray(Image.open(io.BytesIO(many.adversarial_png)), dtype=np.float32) / 255
        x = tiny_cnn.normalised(torch.from_numpy(returned).permute(2, 0, 1)[None])
        with torch.no_grad():
            logits = fixed(x)[0].numpy()
        assert [c.index for c in many.final_top] == list(np.argsort(-logits, kind="stable"))
        assert many.success == (int(logits.argmax()) != many.goal_class)
