"""SequenceService replies built from the cores' plain results: recurrent trajectories, gradient and
truncation analyses, training jobs and their events, corpora. Enum tables between wire codes and names."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services.sequence.jobs.store import EventRecord, JobRecord
from nnprobe_services.sequence.lm import validation as lm_requests
from nnprobe_services.sequence.lm.corpus import SPLITS, Corpus
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.recurrent import gradients, rnn, truncation
from nnprobe_services.sequence.recurrent.convert import CELLS
from nnprobe_services.server import validation as valid

CELL_CODES: dict[str, Any] = {name: code for code, name in CELLS.items()}
REGIMES = {"vanishing": pb.REGIME_VANISHING, "stable": pb.REGIME_STABLE, "exploding": pb.REGIME_EXPLODING}
MODES = {"truncated": pb.TRUNCATION_MODE_TRUNCATED, "full": pb.TRUNCATION_MODE_FULL}
SPLIT_NAMES: dict[int, str] = {
    pb.CORPUS_SPLIT_TRAIN: "train",
    pb.CORPUS_SPLIT_VALID: "valid",
    pb.CORPUS_SPLIT_TEST: "test",
}
SPLIT_CODES: dict[str, Any] = {name: code for code, name in SPLIT_NAMES.items()}
STATE_CODES: dict[str, Any] = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
    "interrupted": pb.JOB_STATE_INTERRUPTED,
}
STATE_NAMES = {code: name for name, code in STATE_CODES.items()}
KIND_CODES: dict[str, Any] = {
    "step": pb.JOB_EVENT_KIND_STEP,
    "evaluation": pb.JOB_EVENT_KIND_EVALUATION,
    "state": pb.JOB_EVENT_KIND_STATE,
    "checkpoint": pb.JOB_EVENT_KIND_CHECKPOINT,
}
OPTIMIZERS: dict[int, str] = {pb.OPTIMIZER_ADAM: "adam", pb.OPTIMIZER_SGD: "sgd"}
OPTIMIZER_CODES: dict[str, Any] = {name: code for code, name in OPTIMIZERS.items()}


def wire(value: torch.Tensor) -> common_pb2.Tensor:
    """A tensor on the wire (its dtype, little-endian, row-major), from any device."""
    return tensors.to_tensor(value.detach().cpu().numpy())


def recurrent(trajectory: rnn.Trajectory, cell: rnn.Cell, tolerance: float) -> pb.RunRecurrentResponse:
    response = pb.RunRecurrentResponse(
        hidden_states=wire(trajectory.hidden),
        step_changes=wire(trajectory.step_changes),
        settled_at=trajectory.settled_at,
        settle_tolerance=tolerance,
    )
    if trajectory.cell is not None:
        response.cell_states.CopyFrom(wire(trajectory.cell))
    if trajectory.outputs is not None:
        response.outputs.CopyFrom(wire(trajectory.outputs))
    for name, value in cell.weights.items():
        response.weights[name].CopyFrom(wire(value))
    return response


def progress(event: gradients.Progress | truncation.Progress) -> pb.Progress:
    return pb.Progress(done=event.done, total=event.total, message=event.message)


def gradient_run(run: gradients.GradientRun) -> pb.GradientRun:
    return pb.GradientRun(
        cell=CELL_CODES[run.cell],
        target_spectral_radius=run.target_spectral_radius,
        spectral_radius=run.spectral_radius,
        weight_norm=run.weight_norm,
        derivative_bound=run.derivative_bound or 0.0,
        has_bound=run.derivative_bound is not None,
        distances=run.distances,
        jacobian_norms=run.jacobian_norms,
        bounds=run.bounds,
        state_jacobian_norms=run.state_jacobian_norms,
        input_gradient_norms=run.input_gradient_norms,
        growth_rate=run.growth_rate,
        regime=REGIMES[run.regime],
        loss=run.loss,
        forget_bias=run.forget_bias,
    )


def truncation_comparison(
    comparison: truncation.Comparison, device: torch.device, plot_png: bytes
) -> pb.TruncationComparison:
    return pb.TruncationComparison(
        points=[
            pb.TruncationPoint(
                chunk_count=p.chunk_count,
                mode=MODES[p.mode],
                saved_bytes=p.saved_bytes,
                peak_device_bytes=p.peak_device_bytes,
                seconds=p.seconds,
                loss=p.loss,
                backward_passes=p.backward_passes,
            )
            for p in comparison.points
        ],
        truncated_slope_bytes=comparison.truncated_slope_bytes,
        full_slope_bytes=comparison.full_slope_bytes,
        device=str(device),
        plot_png=plot_png,
        parameters=comparison.parameters,
    )


def job(record: JobRecord, queue_position: int) -> pb.Job:
    return pb.Job(
        job_id=record.job_id,
        name=record.name,
        corpus_id=record.corpus_id,
        state=STATE_CODES[record.state],
        config=config(TrainingConfig.from_dict(record.config)),
        step=record.step,
        total_steps=record.total_steps,
        steps_per_epoch=record.steps_per_epoch,
        epoch=record.epoch,
        loss=record.loss,
        valid_perplexity=record.valid_perplexity,
        test_perplexity=record.test_perplexity,
        checkpoint_step=record.checkpoint_step,
        device=record.device,
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
        elapsed_seconds=record.elapsed_seconds,
        tokens_per_second=record.tokens_per_second,
        vocab_size=record.vocab_size,
        parameters=record.parameters,
        queue_position=queue_position,
        last_sequence=record.last_sequence,
    )


def config(values: TrainingConfig) -> pb.TrainingConfig:
    fields = values.to_dict()
    fields["optimizer"] = OPTIMIZER_CODES[values.optimizer]
    return pb.TrainingConfig(**fields)


def given_config(message: pb.TrainingConfig) -> dict[str, Any]:
    """The fields a client set (proto3: non-default values, and optional fields set explicitly)."""
    given = {field.name: value for field, value in message.ListFields()}
    if "optimizer" in given:
        code = valid.enum_value(given["optimizer"], pb.Optimizer, "config.optimizer", pb.OPTIMIZER_ADAM)
        given["optimizer"] = OPTIMIZERS[code]
    return given


def request_digest(request: pb.StartTrainingRequest) -> str:
    """sha256 (hex) of what the request asks for, without its ``request_id``: its corpus, its name and the
    canonical form of its config (``requests.canonical_config``: a field given at its default or left out
    is the same request), as JSON with sorted keys. Raises ``InvalidArgument`` for an unknown optimizer."""
    canonical = {
        "corpus_id": request.corpus_id,
        "name": request.name,
        "config": lm_requests.canonical_config(given_config(request.config)),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def event(record: EventRecord) -> pb.JobEvent:
    p = record.payload
    return pb.JobEvent(
        sequence=record.sequence,
        kind=KIND_CODES[record.kind],
        step=p.get("step", 0),
        epoch=p.get("epoch", 0),
        loss=p.get("loss", 0.0),
        perplexity=p.get("perplexity", 0.0),
        tokens_per_second=p.get("tokens_per_second", 0.0),
        elapsed_seconds=p.get("elapsed_seconds", 0.0),
        learning_rate=p.get("learning_rate", 0.0),
        valid_perplexity=p.get("valid_perplexity", 0.0),
        test_perplexity=p.get("test_perplexity", 0.0),
        state=STATE_CODES.get(p.get("state", ""), pb.JOB_STATE_UNSPECIFIED),
        message=p.get("message", ""),
        total_steps=p.get("total_steps", 0),
        time=record.time,
    )


def corpus_info(corpus: Corpus) -> pb.CorpusInfo:
    return pb.CorpusInfo(
        corpus_id=corpus.corpus_id,
        name=corpus.name,
        vocab_size=corpus.vocab_size,
        splits=[
            pb.SplitSummary(split=SPLIT_CODES[name], tokens=s.tokens, lines=s.lines, unknown_tokens=s.unknown)
            for name in SPLITS
            if (s := corpus.splits.get(name)) is not None
        ],
        location=corpus.location,
    )
