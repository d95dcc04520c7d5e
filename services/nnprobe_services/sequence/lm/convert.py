"""SequenceService's language-model RPCs between protobuf and plain values: corpus uploads, training
requests (with their idempotency digest), job filters and sampling options read from requests; jobs, their
events, corpora and model-query results built into replies. Enum tables between wire codes and names.
Errors name the request field (``InvalidArgument``, ``ResourceExhausted`` over a limit)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.jobs.store import EventRecord
from nnprobe_services.sequence.lm import queries, training_checks
from nnprobe_services.sequence.lm.corpus import SPLITS, Corpus
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.workflow import JobDetail, JobView, TrainingRequest

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
CHECKPOINT_NAMES: dict[int, str] = {pb.CHECKPOINT_CHOICE_LAST: "last", pb.CHECKPOINT_CHOICE_BEST: "best"}


def job(view: JobView) -> pb.Job:
    record = view.record
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
        queue_position=view.queue_position,
        last_sequence=record.last_sequence,
        corpus_name=record.corpus_name,
        best_step=record.best_step,
        best_valid_perplexity=record.best_valid_perplexity,
        stop_reason=record.stop_reason,
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
        "config": training_checks.canonical_config(given_config(request.config)),
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
        grad_norm=p.get("grad_norm", 0.0),
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


# -- requests --------------------------------------------------------------------------------------------
async def corpus_upload(
    requests: AsyncIterator[pb.UploadCorpusRequest], max_bytes: int
) -> tuple[str, dict[str, str]]:
    """The corpus name (from the first message that gives one) and the text of each split, joined from the
    stream's chunks. Every message names its split; the text may total at most ``max_bytes`` (UTF-8)."""
    parts: dict[str, list[str]] = {}
    name, size = "", 0
    index = -1
    async for request in requests:
        index += 1
        name = name or request.name
        code = valid.enum_value(request.split, pb.CorpusSplit, f"requests[{index}].split", 0)
        if code == pb.CORPUS_SPLIT_UNSPECIFIED:
            raise InvalidArgument(
                "is required: CORPUS_SPLIT_TRAIN, CORPUS_SPLIT_VALID or CORPUS_SPLIT_TEST",
                field=f"requests[{index}].split",
            )
        size += len(request.text.encode("utf-8"))
        if size > max_bytes:
            raise ResourceExhausted(
                f"the corpus exceeds {max_bytes} bytes, the limit (max_corpus_bytes)", field="text"
            )
        parts.setdefault(SPLIT_NAMES[code], []).append(request.text)
    return name, {split: "".join(chunks) for split, chunks in parts.items()}


def training_request(request: pb.StartTrainingRequest) -> TrainingRequest:
    """StartTraining's key, corpus, name, the config fields set and the request's digest."""
    key = training_checks.request_id(request.request_id)
    if not request.corpus_id:
        raise InvalidArgument("is required: 'ptb' or an id from UploadCorpus", field="corpus_id")
    valid.enum_value(request.config.optimizer, pb.Optimizer, "config.optimizer", pb.OPTIMIZER_ADAM)
    given = given_config(request.config)
    return TrainingRequest(key, request.corpus_id, request.name, given, request_digest(request))


def job_filter(request: pb.ListJobsRequest) -> tuple[list[str], int]:
    """ListJobs' states (names; empty for all) and limit (0: 100, at most 10,000)."""
    states = []
    for index, code in enumerate(request.states):
        valid.enum_value(code, pb.JobState, f"states[{index}]", 0)
        if code != pb.JOB_STATE_UNSPECIFIED:
            states.append(STATE_NAMES[code])
    return states, valid.positive(request.limit, "limit", default=100, maximum=10_000)


def watch_cursor(request: pb.WatchJobRequest) -> int:
    """The sequence after which WatchJob starts (>= 0)."""
    if request.after_sequence < 0:
        raise InvalidArgument(f"must be >= 0, got {request.after_sequence}", field="after_sequence")
    return request.after_sequence


def evaluation_split(request: pb.EvaluatePerplexityRequest) -> tuple[Any, str]:
    """The split's wire code (default: valid) and its name."""
    code: Any = valid.enum_value(request.split, pb.CorpusSplit, "split", pb.CORPUS_SPLIT_VALID)
    return code, SPLIT_NAMES[code]


def sample_options(request: pb.SampleRequest) -> queries.SampleOptions:
    """What Sample generates: the prompt or start word, the strategy and its settings, the seed."""
    strategy = valid.enum_value(
        request.strategy, pb.SamplingStrategy, "strategy", pb.SAMPLING_STRATEGY_MULTINOMIAL
    )
    return queries.SampleOptions(
        prompt=request.prompt,
        start_word_id=request.start_word_id if request.HasField("start_word_id") else None,
        num_words=request.num_words,
        greedy=strategy == pb.SAMPLING_STRATEGY_GREEDY,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_k=request.top_k,
        top_p=request.top_p if request.HasField("top_p") else None,
        seed=request.seed,
    )


def checkpoint_choice(
    request: pb.EvaluatePerplexityRequest
    | pb.SampleRequest
    | pb.EmbeddingDistanceRequest
    | pb.NearestWordsRequest,
) -> str:
    """Which checkpoint a model query reads: "last" (unspecified) or "best"."""
    code = valid.enum_value(request.checkpoint, pb.CheckpointChoice, "checkpoint", pb.CHECKPOINT_CHOICE_LAST)
    return CHECKPOINT_NAMES[code]


def nearest_metric(request: pb.NearestWordsRequest) -> tuple[Any, str]:
    """The metric's wire code (default: euclidean) and its name."""
    metric: Any = valid.enum_value(request.metric, pb.DistanceMetric, "metric", pb.DISTANCE_METRIC_EUCLIDEAN)
    return metric, "cosine" if metric == pb.DISTANCE_METRIC_COSINE else "euclidean"


# -- replies ---------------------------------------------------------------------------------------------
def upload_reply(corpus: Corpus) -> pb.UploadCorpusResponse:
    return pb.UploadCorpusResponse(corpus=corpus_info(corpus))


def start_reply(view: JobView) -> pb.StartTrainingResponse:
    return pb.StartTrainingResponse(job=job(view))


def list_reply(views: list[JobView]) -> pb.ListJobsResponse:
    return pb.ListJobsResponse(jobs=[job(view) for view in views])


def get_reply(detail: JobDetail) -> pb.GetJobResponse:
    return pb.GetJobResponse(
        job=job(detail.view), events=[event(e) for e in detail.events], plot_png=detail.plot_png
    )


def cancel_reply(view: JobView) -> pb.CancelJobResponse:
    return pb.CancelJobResponse(job=job(view))


def resume_reply(view: JobView) -> pb.ResumeJobResponse:
    return pb.ResumeJobResponse(job=job(view))


def training_logs_reply(files: list[tuple[str, bytes]]) -> pb.GetTrainingLogsResponse:
    return pb.GetTrainingLogsResponse(
        files=[pb.TrainingLogFile(name=name, data=data) for name, data in files],
        total_bytes=sum(len(data) for _, data in files),
    )


def watch_reply(record: EventRecord) -> pb.WatchJobResponse:
    return pb.WatchJobResponse(event=event(record))


def evaluation_reply(result: queries.Evaluation, split: Any) -> pb.EvaluatePerplexityResponse:
    return pb.EvaluatePerplexityResponse(
        perplexity=result.perplexity,
        loss=result.loss,
        tokens=result.tokens,
        step=result.step,
        split=split,
        seconds=result.seconds,
    )


def sample_reply(result: queries.Sample) -> pb.SampleResponse:
    return pb.SampleResponse(
        words=result.words,
        word_ids=result.word_ids,
        text=result.text,
        prompt_ids=result.prompt_ids,
        log_probability=result.log_probability,
        step=result.step,
    )


def distance_reply(found: queries.WordDistance) -> pb.EmbeddingDistanceResponse:
    d = found.distance
    return pb.EmbeddingDistanceResponse(
        euclidean=d.euclidean,
        cosine_similarity=d.cosine_similarity,
        cosine_distance=1 - d.cosine_similarity,
        id_a=found.id_a,
        id_b=found.id_b,
        norm_a=d.norm_a,
        norm_b=d.norm_b,
        step=found.step,
    )


def nearest_reply(found: queries.Neighbours, metric: Any) -> pb.NearestWordsResponse:
    return pb.NearestWordsResponse(
        neighbors=[pb.Neighbor(word=w, word_id=i, distance=d) for w, i, d in found.neighbours],
        word_id=found.word_id,
        metric=metric,
        step=found.step,
    )
