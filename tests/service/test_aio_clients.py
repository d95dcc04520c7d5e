"""The asyncio clients (``nnprobe.aio``) against in-process servers: unary calls, a client stream with
progress, server streams (an async iterator, and progress through ``on_progress``), and errors raised as
their status's subclass. Expected values come from numpy and torch run here, or from closed forms."""

from __future__ import annotations

import asyncio

import nnprobe
import nnprobe.aio
import numpy as np
import pytest
import torch
from nnprobe.vision import Layer

from tests.support import tiny_cnn


def softmax_attention(x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray) -> np.ndarray:
    """One head of self-attention with a row softmax, scaled by sqrt(D), in numpy."""
    scores = (x @ wq) @ (x @ wk).T / np.sqrt(x.shape[1])
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)) @ (x @ wv)


def test_attention_calls_run_concurrently_and_errors_are_subclasses(attention_server):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    weights = [rng.standard_normal((4, 4)) for _ in range(3)]

    async def main():
        async with nnprobe.aio.AttentionClient(attention_server, timeout=60) as client:
            assert await client.health() == "SERVING"
            checks = await asyncio.gather(
                client.check_permutation_equivariance(x, weights=weights),
                client.check_pooling_invariance(x, weights=weights, pooling="sum"),
                client.check_feed_forward_equivalence(widths=[4, 8, 4], batch_size=2, sequence_length=3),
            )
            with pytest.raises(nnprobe.InvalidArgument) as caught:
                await client.check_permutation_equivariance(
                    sequence_length=4, model_dim=4, scale=float("nan")
                )
            return checks, caught.value

    (permutation, pooling, feed_forward), error = asyncio.run(main())
    np.testing.assert_allclose(permutation.output, softmax_attention(x, *weights), atol=1e-9)
    assert permutation.holds and permutation.permutations_checked == 120  # 5! orderings
    np.testing.assert_allclose(pooling.output, softmax_attention(x, *weights).sum(axis=0), atol=1e-9)
    assert feed_forward.equivalent and feed_forward.widths == [4, 8, 4]
    assert feed_forward.linear_parameters == feed_forward.conv_parameters == 4 * 8 + 8 + 8 * 4 + 4
    assert isinstance(error, nnprobe.NnprobeError) and error.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in error.field_violations] == ["attention.scale"]


def test_vision_upload_classify_attack_and_not_found(vision_server, tmp_path):
    net = tiny_cnn.network()
    path = tiny_cnn.write(tmp_path / "tiny.onnx", tiny_cnn.onnx_bytes(net))
    images = np.random.default_rng(5).integers(0, 256, (2, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.uint8)
    uploaded, attacked = [], []

    async def main():
        async with nnprobe.aio.VisionClient(vision_server, timeout=120) as client:
            upload = await client.upload_model(
                path,
                name="aio-tiny",
                config=tiny_cnn.CONFIG_YAML,
                labels=tiny_cnn.LABELS,
                on_progress=uploaded.append,
            )
            classified = await client.classify(
                list(images), model="aio-tiny", skip_resize=True, return_logits=True
            )
            field = await client.compute_receptive_field(
                [Layer(name, k, stride=s, padding=p) for name, k, s, p in tiny_cnn.LAYERS], input_size=16
            )
            options = dict(
                model="aio-tiny", target="bee", method="pgd", steps=3, early_stop=False, eps="8/255"
            )
            stream = [event async for event in client.generate_adversarial(images[0], **options)]
            results = await client.attack(list(images), on_progress=attacked.append, **options)
            with pytest.raises(nnprobe.NotFound) as caught:
                await client.delete_model("aio-no-such-model")
            return upload, classified, field, stream, results, caught.value

    upload, classified, field, stream, results, missing = asyncio.run(main())
    size = path.stat().st_size
    assert upload.version == 1 and uploaded[-1].done == uploaded[-1].total == size
    assert {p.unit for p in uploaded} == {"bytes"} and [p.done for p in uploaded] == sorted(
        p.done for p in uploaded
    )
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        expected = net(tiny_cnn.normalised(pixels)).numpy()
    np.testing.assert_allclose(np.stack([c.logits for c in classified]), expected, atol=1e-4)
    # conv 3 (pad 1), pool 2 (stride 2), conv 3: fields 3, 4 and 4 + 2 * 2 = 8, jumps 1, 2, 2.
    assert [(f.height.receptive_size, f.height.jump) for f in field.layers[1:]] == [(3, 1), (4, 2), (8, 2)]
    progress = [e for e in stream if isinstance(e, nnprobe.AttackProgress)]
    assert [p.iteration for p in progress] == [1, 2, 3] and isinstance(stream[-1], nnprobe.AdversarialResult)
    assert [r.image for r in results] == [0, 1] and all(r.iterations == 3 for r in results)
    assert sorted((p.detail.image, p.done) for p in attacked) == [(i, k) for i in (0, 1) for k in (1, 2, 3)]
    assert {(p.total, p.unit) for p in attacked} == {(3, "iterations")}
    assert missing.code.name == "NOT_FOUND" and "aio-no-such-model" in missing.message


def rnn_tanh(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh) from h_0 = 0, in numpy: (T, B, H)."""
    h = np.zeros((x.shape[1], weights["weight_hh_l0"].shape[0]))
    states = []
    for x_t in x:
        pre = x_t @ weights["weight_ih_l0"].T + weights["bias_ih_l0"] + h @ weights["weight_hh_l0"].T
        h = np.tanh(pre + weights["bias_hh_l0"])
        states.append(h)
    return np.stack(states)


def test_sequence_unary_streamed_progress_and_not_found(sequence_server):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 2, 3))
    weights = {
        "weight_ih_l0": rng.standard_normal((4, 3)) * 0.5,
        "weight_hh_l0": rng.standard_normal((4, 4)) * 0.5,
        "bias_ih_l0": rng.standard_normal(4) * 0.1,
        "bias_hh_l0": rng.standard_normal(4) * 0.1,
    }
    seen = []

    async def main():
        async with nnprobe.aio.SequenceClient(sequence_server, timeout=120) as client:
            forward = await client.run_recurrent(x, cell="rnn_tanh", weights=weights)
            gradients = await client.analyze_gradients(
                cells=["rnn_tanh", "gru"],
                spectral_radii=[0.5],
                hidden_size=8,
                sequence_length=12,
                on_progress=seen.append,
            )
            with pytest.raises(nnprobe.NotFound) as unary:
                await client.get_job("job-missing")
            with pytest.raises(nnprobe.NotFound) as streamed:
                async for _ in client.watch_job("job-missing"):
                    pass
            return forward, gradients, unary.value, streamed.value

    forward, gradients, unary, streamed = asyncio.run(main())
    np.testing.assert_allclose(forward.hidden_states, rnn_tanh(x, weights), atol=1e-12)
    assert [(r.cell, r.target_spectral_radius) for r in gradients.runs] == [("rnn_tanh", 0.5), ("gru", 0.5)]
    # Two runs of 12 Jacobian steps each, counted in one unit; the last event ends the sweep.
    assert {(p.total, p.unit) for p in seen} == {(24, "jacobian steps")} and seen[-1].done == 24
    assert seen[-1].message == "gru rho=0.5" and seen[-1].fraction == 1.0
    assert isinstance(unary, nnprobe.NnprobeError) and "job-missing" in unary.message
    assert type(streamed) is nnprobe.NotFound and streamed.__cause__ is not None


def test_a_sync_not_found_is_caught_by_its_subclass(sequence_server):
    with nnprobe.SequenceClient(sequence_server, timeout=30) as client:
        try:
            client.cancel_job("job-missing")
        except nnprobe.NotFound as error:
            caught = error
    assert caught.code.name == "NOT_FOUND" and isinstance(caught.__cause__, Exception)
    assert type(caught.__cause__).__module__.startswith("grpc")


def test_a_training_job_waited_for_through_asyncio(sequence_server, pattern_text, tiny_lm):
    seen = []

    async def main():
        async with nnprobe.aio.SequenceClient(sequence_server, timeout=120) as client:
            corpus = await client.upload_corpus(pattern_text(60), pattern_text(10, 60), pattern_text(10, 70))
            job = await client.start_training(corpus.corpus_id, epochs=1, seed=3, **tiny_lm)
            finished = await client.wait_job(job.job_id, on_progress=seen.append)
            handled = await client.job(job.job_id).result()
            return job, finished, handled

    job, finished, handled = asyncio.run(main())
    assert finished.state == "succeeded" and handled.job_id == job.job_id and handled.events
    # One Progress per event, in steps of the job's total, the event itself as the detail.
    assert [p.detail.sequence for p in seen] == [e.sequence for e in handled.events]
    steps = [p for p in seen if p.detail.kind == "step"]
    assert {p.unit for p in seen} == {"steps"} and all(p.total == finished.total_steps for p in steps)
    assert steps[-1].done == finished.total_steps and steps[-1].fraction == 1.0
    assert [p.done for p in steps] == sorted(p.done for p in steps)
