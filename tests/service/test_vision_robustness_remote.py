"""EvaluateRobustness of a model on a remote Open Inference Protocol endpoint: a second in-process vision
server serves the tiny CNN over the protocol, and a Square job through the SDK (sync, asyncio and the CLI)
gives the per-image results and query counts of the core ``evaluate`` run here on the same network through
onnxruntime with the same seed; a counting wrapper around that network accounts for every row it was sent.
An unreachable endpoint fails the job with its UNAVAILABLE message; bad addresses and white-box attacks are
refused naming the field."""

from __future__ import annotations

import asyncio
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
from nnprobe_services.vision.robustness.ensemble import AttackSettings
from nnprobe_services.vision.robustness.evaluate import evaluate
from nnprobe_services.vision.robustness.square import SquareSettings

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
COUNT = 6
EPS = [4 / 255, 16 / 255]
QUERIES = 25
SEED = 4
BATCH = 4


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return tiny_cnn.write(
        tmp_path_factory.mktemp("remote") / "tiny.onnx", tiny_cnn.onnx_bytes(tiny_cnn.network())
    )


@pytest.fixture(scope="module")
def session(onnx_file):
    return onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


class Counting:
    """The network (onnxruntime) on [0, 1] pixels, counting the rows sent per data-set image (the image
    each row lies within ε of)."""

    def __init__(self, session, originals: torch.Tensor):
        self.session, self.originals = session, originals
        self.rows = np.zeros(len(originals), dtype=np.int64)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        distance = (pixels[:, None] - self.originals[None]).abs().flatten(2).amax(2)
        np.add.at(self.rows, distance.argmin(1).numpy(), 1)
        logits = self.session.run(None, {"x": tiny_cnn.normalised(pixels).numpy()})[0]
        return torch.from_numpy(logits)


@pytest.fixture(scope="module")
def data(session):
    pixels = np.random.default_rng(11).integers(0, 256, (COUNT, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(Counting(session, x)(x).numpy().argmax(1))
    labels[0] = (labels[0] + 1) % tiny_cnn.CLASSES
    return pixels, x, labels


@pytest.fixture(scope="module")
def servers(module_server_factory, tmp_path_factory, onnx_file, data):
    """(the evaluating server's address, the endpoint's address)."""
    _, endpoint = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=tmp_path_factory.mktemp("endpoint")
    )
    with VisionClient(endpoint, timeout=120) as vision:
        vision.upload_model(onnx_file, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
    _, address = module_server_factory(
        "vision",
        weights_download_timeout=0,
        model_repository=tmp_path_factory.mktemp("evaluator"),
        job_poll_seconds=0.2,
    )
    with VisionClient(address, timeout=120) as vision:
        vision.upload_dataset("six", list(data[0]), [str(v) for v in data[2].tolist()])
    return address, endpoint


@pytest.fixture(scope="module")
def reference(session, data):
    counting = Counting(session, data[1])
    settings_ = AttackSettings(square=SquareSettings(queries=QUERIES))
    result = evaluate(
        None,
        data[1],
        data[2],
        EPS,
        ["square"],
        "linf",
        SEED,
        judge=counting,
        settings=settings_,
        batch_size=BATCH,
    )
    return result, counting.rows


def _check(result, reference) -> None:
    expected, rows = reference
    for i, (image, record) in enumerate(zip(result.images, expected.records, strict=True)):
        assert image.status == record.status and image.queries == record.queries
        assert image.prediction == str(record.prediction)  # an endpoint names no classes
        # Every row the network saw: one clean query, a repeat for the first batch, Square's queries, and
        # one confirmation per image Square broke (not carried over from the smaller ε).
        fresh = [
            s == "broken" and not (k and image.status[k - 1] == "broken") for k, s in enumerate(image.status)
        ]
        assert rows[i] == 1 + (i < BATCH) + sum(image.queries) + sum(fresh)
        assert all(q <= QUERIES for q in image.queries)
    assert (
        result.images[0].status == ["misclassified"] * 2
        and sum(map(sum, (i.queries for i in result.images))) > 0
    )
    assert [e.robust for e in result.per_epsilon] == [
        sum(r.status[k] == "robust" for r in expected.records) for k in range(len(EPS))
    ]


def test_remote_square_matches_the_core_and_counts_every_query(servers, reference):
    address, endpoint = servers
    with VisionClient(address, timeout=120) as client:
        job = client.evaluate_robustness(
            None,
            "six",
            endpoint=(endpoint, "tiny"),
            eps=EPS,
            attacks="square",
            max_queries=QUERIES,
            seed=SEED,
            batch_size=BATCH,
        )
        result = job.result(timeout=300)
        assert job.status().model == f"tiny@{endpoint}"
    _check(result, reference)


def test_remote_square_through_the_asyncio_client_and_the_cli(servers, reference, capsys):
    address, endpoint = servers

    async def run():
        async with nnprobe.aio.VisionClient(address, timeout=120) as client:
            job = await client.evaluate_robustness(
                None,
                "six",
                endpoint=f"{endpoint}/tiny/1",
                eps=EPS,
                attacks="square",
                max_queries=QUERIES,
                seed=SEED,
                batch_size=BATCH,
            )
            return await job.result(timeout=300)

    _check(asyncio.run(run()), reference)
    argv = [
        "robustness",
        "tiny",
        "six",
        "--endpoint",
        endpoint,
        "--model-version",
        "1",
        "--eps",
        "4/255",
        "16/255",
    ]
    argv += ["--max-queries", str(QUERIES), "--seed", str(SEED), "--batch-size", str(BATCH)]
    assert main([*argv, "--address", address, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "succeeded"
    assert [image["queries"] for image in shown["result"]["images"]] == [
        r.queries for r in reference[0].records
    ]


def test_an_unreachable_endpoint_fails_the_job_with_unavailable(servers, free_port):
    address, _ = servers
    with VisionClient(address, timeout=120) as client:
        job = client.evaluate_robustness(
            None, "six", endpoint=(f"127.0.0.1:{free_port()}", "tiny"), eps=[0.01], attacks="square"
        )
        ended = job.watch(progress=False, timeout=120)
    assert ended.state == "failed"
    assert "UNAVAILABLE" in ended.error and "ModelMetadata" in ended.error


def test_white_box_attacks_on_a_remote_model_are_refused(servers):
    address, endpoint = servers
    with VisionClient(address, timeout=60) as client, pytest.raises(NnprobeError) as caught:
        client.evaluate_robustness(None, "six", endpoint=(endpoint, "tiny"), eps=[0.01], attacks="standard")
    assert caught.value.code.name == "FAILED_PRECONDITION"
    assert [v.field for v in caught.value.field_violations] == ["attacks"]
    assert "square" in caught.value.message


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.just(""),
        st.text(alphabet="ab.-", min_size=1, max_size=12),
        st.integers(65536, 10**6).map(lambda port: f"localhost:{port}"),
        st.integers(0, 0).map(lambda port: f"localhost:{port}"),
        st.just("::1:50051"),
        st.text(min_size=256, max_size=300),
    )
)
def test_bad_addresses_are_refused_naming_the_field(servers, address_text):
    address, _ = servers
    with VisionClient(address, timeout=60) as client, pytest.raises(NnprobeError) as caught:
        client.evaluate_robustness(None, "six", endpoint=(address_text, "tiny"), eps=[0.01], attacks="square")
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in caught.value.field_violations] == ["remote.address"]


def test_a_model_beside_a_remote_one_and_an_empty_remote_name_are_refused(servers):
    address, endpoint = servers
    with VisionClient(address, timeout=60) as client:
        for model, remote, field in (
            ("tiny", (endpoint, "tiny"), "model"),
            (None, (endpoint, ""), "remote.model_name"),
        ):
            with pytest.raises(NnprobeError) as caught:
                client.evaluate_robustness(model, "six", endpoint=remote, eps=[0.01], attacks="square")
            assert caught.value.code.name == "INVALID_ARGUMENT"
            assert [v.field for v in caught.value.field_violations] == [field]


def test_an_unknown_remote_model_is_not_found_naming_the_field(servers):
    address, endpoint = servers
    with VisionClient(address, timeout=60) as client, pytest.raises(NnprobeError) as caught:
        client.evaluate_robustness(None, "six", endpoint=(endpoint, "nope"), eps=[0.01], attacks="square")
    assert caught.value.code.name == "NOT_FOUND"
    assert [v.field for v in caught.value.field_violations] == ["remote.model_name"]
    assert f"remote model at {endpoint}: ModelMetadata failed with NOT_FOUND" in caught.value.message
