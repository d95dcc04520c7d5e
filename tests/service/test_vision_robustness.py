"""EvaluateRobustness through the SDK: a small data set uploaded, jobs with "pgd" and "standard" (few steps
and queries) giving the per-image results of the core ``evaluate`` called here on the same network, images and
seed; adversarial PNGs within budget; cancel then resume, a hand-over by a stopping replica and a takeover
after an expired lease (two servers sharing one data folder and job store) all equal to an uninterrupted
run; validation errors."""

from __future__ import annotations

import asyncio
import io
import json

import nnprobe.aio
import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import NnprobeError, VisionClient
from nnprobe.cli import main
from nnprobe_services.vision.robustness.apgd import ApgdSettings
from nnprobe_services.vision.robustness.ensemble import AttackSettings
from nnprobe_services.vision.robustness.evaluate import evaluate
from nnprobe_services.vision.robustness.fab import FabSettings
from nnprobe_services.vision.robustness.pgd import PgdSettings
from nnprobe_services.vision.robustness.square import SquareSettings
from PIL import Image

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
COUNT = 8


def _net() -> torch.nn.Module:
    net = tiny_cnn.network(0)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def _model(x: torch.Tensor) -> torch.Tensor:
    return NET(tiny_cnn.normalised(x))


NET = _net()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data():
    """8 random 8-bit images (H, W, 3) and labels: the network's prediction, except images 0 and 1."""
    pixels = np.random.default_rng(5).integers(
        0, 256, (COUNT, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.uint8
    )
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        labels = _model(x).argmax(1)
    labels[:2] = (labels[:2] + 1) % tiny_cnn.CLASSES
    return pixels, x, labels


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("datasets")
    for i, image in enumerate(data[0][:3]):
        tiny_cnn.write(root / "folder" / tiny_cnn.LABELS[i] / f"{i}.png", _png(image))
    model = tiny_cnn.write(tmp_path_factory.mktemp("model") / "tiny.pt2", tiny_cnn.pt2_bytes(NET))
    _, address = module_server_factory(
        "vision",
        weights_download_timeout=0,
        model_repository=tmp_path_factory.mktemp("repository"),
        datasets_dir=root,
        max_dataset_images=20,
        job_poll_seconds=0.2,
    )
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(model, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
        names = [tiny_cnn.LABELS[i] for i in data[2].tolist()]
        info = vision.upload_dataset("eight", list(data[0]), names)
        assert (info.name, info.images) == ("eight", COUNT)
        yield vision


def _reference(data, eps, attacks, seed, settings, batch_size):
    return evaluate(
        _model, data[1], data[2], eps, attacks, "linf", seed, settings=settings, batch_size=batch_size
    )


def _same_images(result, expected, eps) -> None:
    for image, record in zip(result.images, expected.records, strict=True):
        assert image.status == record.status
        assert image.broken_by == [b or "" for b in record.broken_by]
        assert image.queries == record.queries
        assert image.prediction == tiny_cnn.LABELS[record.prediction]
        for k, png in enumerate(image.adversarial):
            assert (png is None) == (record.adversarial[k] is None)
            if png is not None:
                pixels = np.asarray(Image.open(io.BytesIO(png))).transpose(2, 0, 1)
                assert np.array_equal(pixels, record.adversarial[k])
    for summary, item in zip(expected.per_epsilon, result.per_epsilon, strict=True):
        assert (item.robust, item.accuracy) == (summary.robust, pytest.approx(summary.accuracy))
        assert (item.low, item.high) == (pytest.approx(summary.low), pytest.approx(summary.high))


def test_pgd_job_matches_the_core_and_stays_within_budget(client, data):
    eps = [2 / 255, 8 / 255]
    job = client.evaluate_robustness(
        "tiny", "eight", eps=["2/255", "8/255"], attacks="pgd", steps=5, seed=3, batch_size=4
    )
    events = []
    job.watch(progress=False, on_progress=events.append)
    result = job.result(timeout=120)
    expected = _reference(data, eps, "pgd", 3, AttackSettings(pgd=PgdSettings(5)), 4)
    _same_images(result, expected, eps)
    assert result.clean_correct == COUNT - 2 and result.images[0].status == ["misclassified"] * 2
    assert max(e.done for e in events) == 4 and result.plot.startswith(b"\x89PNG")
    broken = 0
    for image, original in zip(result.images, data[0], strict=True):
        for k, png in enumerate(image.adversarial):
            if png is not None:
                broken += 1
                steps = np.asarray(Image.open(io.BytesIO(png))).astype(int) - original.astype(int)
                assert np.abs(steps).max() <= int(255 * eps[k] + 1e-9)
    assert broken > 0


def test_standard_job_matches_the_core(client, data):
    settings = AttackSettings(
        apgd=ApgdSettings(steps=3),
        fab=FabSettings(steps=3),
        square=SquareSettings(queries=20),
        pgd=PgdSettings(3),
    )
    job = client.evaluate_robustness(
        "tiny", "eight", eps=[4 / 255], steps=3, max_queries=20, seed=1, batch_size=8
    )
    result = job.result(timeout=300)
    expected = _reference(data, [4 / 255], "standard", 1, settings, 8)
    _same_images(result, expected, [4 / 255])
    assert "index,label" in result.to_csv() and '"clean_correct"' in result.to_json()


def test_cancel_then_resume_gives_the_uninterrupted_results(client, data):
    eps = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    job = client.evaluate_robustness("tiny", "eight", eps=eps, attacks="pgd", steps=40, seed=9, batch_size=1)
    for event in client.watch_robustness_job(job.job_id, timeout=120):
        if event.units_done >= 2:
            break
    cancelled = job.cancel()
    assert cancelled.state == "cancelled" and 2 <= cancelled.units_done < cancelled.units_total
    assert job.resume().state in ("queued", "running")
    result = job.result(timeout=300)
    _same_images(result, _reference(data, eps, "pgd", 9, AttackSettings(pgd=PgdSettings(40)), 1), eps)
    assert any(j.job_id == job.job_id for j in client.list_robustness_jobs(states=["succeeded"]))


def test_a_server_folder_is_imported_in_imagefolder_layout(client, data):
    info = client.upload_dataset("folder", server_folder="folder")
    assert (info.images, info.labels) == (3, sorted(tiny_cnn.LABELS[:3]))


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (dict(model="nope", dataset="eight", eps=[0.01]), "NOT_FOUND", "model"),
        (dict(model="tiny", dataset="none", eps=[0.01]), "NOT_FOUND", "dataset"),
        (dict(model="tiny", dataset="eight", eps=[]), "INVALID_ARGUMENT", "epsilons"),
        (dict(model="tiny", dataset="eight", eps=[0.02, 0.01]), "INVALID_ARGUMENT", "epsilons[1]"),
        (dict(model="tiny", dataset="eight", eps=[0.01], attacks="cw"), "INVALID_ARGUMENT", "attacks"),
        (dict(model="tiny", dataset="eight", eps=[2.0]), "INVALID_ARGUMENT", "epsilons"),
        (dict(model="tiny", dataset="../x", eps=[0.01]), "INVALID_ARGUMENT", "dataset"),
        (
            dict(model="tiny", dataset="eight", eps=[k / 1000 for k in range(1, 66)]),
            "RESOURCE_EXHAUSTED",
            "epsilons",
        ),
        (
            dict(model="tiny", dataset="eight", eps=[0.01], max_queries=2**31 - 1),
            "INVALID_ARGUMENT",
            "max_queries",
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_field(client, call, code, field):
    with pytest.raises(NnprobeError) as caught:
        client.evaluate_robustness(**call)
    assert caught.value.code.name == code
    assert [v.field for v in caught.value.field_violations] == [field]


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        (dict(images=[b"not an image"], labels=["ant"]), "INVALID_ARGUMENT", "images[0].data"),
        (
            dict(images=[np.zeros((2, 2, 3), np.uint8)] * 21, labels=["ant"] * 21),
            "RESOURCE_EXHAUSTED",
            "images",
        ),
        (dict(images=[b"\x89PNG\r\n\x1a\nxxxx"], labels=["ant"]), "INVALID_ARGUMENT", "images[0].data"),
        (dict(server_folder="../etc"), "INVALID_ARGUMENT", "server_folder"),
        (dict(server_folder="missing"), "NOT_FOUND", "server_folder"),
        (dict(server_folder="a\x00b"), "INVALID_ARGUMENT", "server_folder"),
        (dict(server_folder="a" * 5000), "INVALID_ARGUMENT", "server_folder"),
    ],
)
def test_bad_uploads_are_refused_naming_the_field(client, kwargs, code, field):
    with pytest.raises(NnprobeError) as caught:
        client.upload_dataset("bad", **kwargs)
    assert caught.value.code.name == code
    assert [v.field for v in caught.value.field_violations] == [field]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=st.one_of(st.text(max_size=6), st.binary(max_size=6)))
def test_any_label_is_stored_as_its_text_or_refused_naming_it(client, data, label):
    """Text and bytes labels, lone surrogates and undecodable bytes included: the label's UTF-8 text is
    stored (stripped; blank is INVALID_ARGUMENT on images[0].label), and a label without a UTF-8 form is a
    ``ValueError`` naming ``labels[0]`` before anything is sent (not UNKNOWN from the request stream)."""
    try:
        text = label.decode() if isinstance(label, bytes) else label
        text.encode()
    except UnicodeError:
        text = None
    image = data[0][0]
    if text is None:
        with pytest.raises(ValueError, match=r"^labels\[0\]: .* is not UTF-8 text"):
            client.upload_dataset("labels", [image], [label])
    elif not text.strip():
        with pytest.raises(NnprobeError) as caught:
            client.upload_dataset("labels", [image], [label])
        assert [v.field for v in caught.value.field_violations] == ["images[0].label"]
    else:
        assert client.upload_dataset("labels", [image], [label]).labels == [text.strip()]


def _fraction_oracle(text: str) -> float | None:
    """``text`` as a number or ``a/b`` fraction, written here independently; None when it is neither."""
    parts = text.split("/")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        return None
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) != 2 or numbers[1] == 0:
        return None
    return numbers[0] / numbers[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.text(max_size=8),
        st.tuples(st.integers(-9, 9), st.integers(-2, 2)).map(lambda p: f"{p[0]}/{p[1]}"),
    )
)
def test_an_eps_text_that_is_no_number_is_a_value_error_naming_it(client, text):
    """Any text as the second ε: a number or fraction is sent (the server judges it), anything else (``8/0``
    included) is a ``ValueError`` naming ``eps[1]`` before the request."""
    if _fraction_oracle(text) is not None:
        return  # sent; the server's checks are tested above
    with pytest.raises(ValueError, match=r"^eps\[1\]: .* is not a number or a fraction like 4/255"):
        client.evaluate_robustness("tiny", "eight", eps=[0.001, text])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.text(max_size=10))
def test_an_unknown_job_state_is_a_value_error_naming_states(client, state):
    known = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
    if state in known:
        assert all(job.state == state for job in client.list_robustness_jobs(states=[state]))
        return
    with pytest.raises(ValueError, match=r"^states: unknown job state .*; choose from queued, running"):
        client.list_robustness_jobs(states=["running", state])


def test_unknown_jobs_are_not_found(client):
    with pytest.raises(NnprobeError) as caught:
        client.get_robustness_job("rob-none")
    assert caught.value.code.name == "NOT_FOUND"


def test_the_asyncio_client_runs_the_same_job(client, data):
    async def run():
        async with nnprobe.aio.VisionClient(client.address, timeout=120) as vision:
            job = await vision.evaluate_robustness(
                "tiny", "eight", eps=[8 / 255], attacks="pgd", steps=5, seed=3, batch_size=4
            )
            return await job.result(timeout=120)

    expected = _reference(data, [8 / 255], "pgd", 3, AttackSettings(pgd=PgdSettings(5)), 4)
    _same_images(asyncio.run(run()), expected, [8 / 255])


def test_a_job_handed_over_by_a_stopping_replica_finishes_on_the_next_with_the_same_results(
    server_factory, tmp_path, data
):
    eps = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    model = tiny_cnn.write(tmp_path / "tiny.pt2", tiny_cnn.pt2_bytes(NET))
    shared = dict(model_repository=tmp_path / "repository", job_poll_seconds=0.2, weights_download_timeout=0)
    first, address = server_factory("vision", tmp_path, replica_id="first", **shared)
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(model, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
        vision.upload_dataset("eight", list(data[0]), [tiny_cnn.LABELS[i] for i in data[2].tolist()])
        job = vision.evaluate_robustness(
            "tiny", "eight", eps=eps, attacks="pgd", steps=40, seed=4, batch_size=1
        )
        for event in vision.watch_robustness_job(job.job_id, timeout=120):
            if event.units_done >= 2:
                break
    assert first.shutdown(10).wait(60)
    _, address = server_factory("vision", tmp_path, replica_id="second", **shared)
    with VisionClient(address, timeout=120) as vision:
        handed = vision.get_robustness_job(job.job_id)
        assert handed.state in ("queued", "running") and 2 <= handed.units_done < handed.units_total
        result = vision.robustness_job(job.job_id).result(timeout=300)
        messages = [e.message for e in vision.watch_robustness_job(job.job_id, timeout=60)]
    assert any("handed over by replica first" in m for m in messages)
    assert any("running (replica second)" in m for m in messages)
    _same_images(result, _reference(data, eps, "pgd", 4, AttackSettings(pgd=PgdSettings(40)), 1), eps)


def test_a_job_whose_lease_expired_is_taken_over_with_the_same_results(server_factory, tmp_path, data):
    eps = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    model = tiny_cnn.write(tmp_path / "tiny.pt2", tiny_cnn.pt2_bytes(NET))
    shared = dict(
        model_repository=tmp_path / "repository",
        job_poll_seconds=0.2,
        job_lease_seconds=1.0,
        weights_download_timeout=0,
    )
    first, address = server_factory("vision", tmp_path, replica_id="first", **shared)
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(model, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
        vision.upload_dataset("eight", list(data[0]), [tiny_cnn.LABELS[i] for i in data[2].tolist()])
        job = vision.evaluate_robustness(
            "tiny", "eight", eps=eps, attacks="pgd", steps=150, seed=6, batch_size=1
        )
        for event in vision.watch_robustness_job(job.job_id, timeout=120):
            if event.units_done >= 1:
                break
    # The first replica stalls: it stops renewing its lease (as a replica frozen or cut off would).
    first.registration.drain.__self__.robustness.jobs.supervisor._heartbeat = lambda: None
    _, address = server_factory("vision", tmp_path, replica_id="second", **shared)
    with VisionClient(address, timeout=120) as vision:
        result = vision.robustness_job(job.job_id).result(timeout=300)
        messages = [e.message for e in vision.watch_robustness_job(job.job_id, timeout=60)]
    assert any("taken over by replica second from first" in m for m in messages)
    _same_images(result, _reference(data, eps, "pgd", 6, AttackSettings(pgd=PgdSettings(150)), 1), eps)


def test_a_model_without_gradients_takes_square_alone_as_a_black_box(client, data, tmp_path):
    graph = tiny_cnn.onnx_graph(op="Shrink")  # no PyTorch conversion: no gradients
    model = tiny_cnn.write(tmp_path / "shrink.onnx", graph)
    client.upload_model(model, name="shrink", config=CONFIG, labels=tiny_cnn.LABELS)
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])

    def judge(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": tiny_cnn.normalised(x).numpy()})[0])

    labels = judge(data[1]).argmax(1)  # the graph's own predictions: every image starts correct
    client.upload_dataset("shrink-eight", list(data[0]), [tiny_cnn.LABELS[i] for i in labels.tolist()])
    with pytest.raises(NnprobeError) as caught:
        client.evaluate_robustness("shrink", "shrink-eight", eps=[4 / 255], attacks="standard")
    assert caught.value.code.name == "FAILED_PRECONDITION" and 'attacks=["square"]' in str(caught.value)
    assert [v.field for v in caught.value.field_violations] == ["attacks"]
    eps = [4 / 255, 16 / 255]
    job = client.evaluate_robustness(
        "shrink", "shrink-eight", eps=eps, attacks=["square"], max_queries=15, seed=2
    )
    result = job.result(timeout=120)
    settings = AttackSettings(square=SquareSettings(queries=15))
    expected = evaluate(None, data[1], labels, eps, ["square"], "linf", 2, judge=judge, settings=settings)
    assert [image.status for image in result.images] == [r.status for r in expected.records]
    assert [image.queries for image in result.images] == [r.queries for r in expected.records]
    assert result.clean_correct == COUNT and all(q > 0 for image in result.images for q in image.queries)


def test_the_command_line_runs_a_job_and_prints_the_sdk_result(client, tmp_path, capsys):
    argv = ["robustness", "tiny", "eight", "--eps", "2/255", "8/255", "--attacks", "pgd", "--steps", "5"]
    argv += ["--seed", "3", "--batch-size", "4", "--address", client.address, "--json"]
    argv += ["--save-csv", str(tmp_path / "out.csv")]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    job = client.get_robustness_job(printed["job_id"])
    assert printed["state"] == "succeeded" and printed["result"] == json.loads(job.result.to_json())
    assert (tmp_path / "out.csv").read_bytes() == job.result.to_csv().encode()
    assert [e["epsilon"] for e in printed["result"]["per_epsilon"]] == [2 / 255, 8 / 255]
