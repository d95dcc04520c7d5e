"""Training jobs of the language model: start, watch, list, get, cancel, resume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault, choice
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.errors import NnprobeError
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.sequence.watching import Reconnection

_OPTIMIZERS = {"adam": pb.OPTIMIZER_ADAM, "sgd": pb.OPTIMIZER_SGD}
_OPTIMIZER_NAMES = {code: name for name, code in _OPTIMIZERS.items()}
_JOB_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
    "interrupted": pb.JOB_STATE_INTERRUPTED,
}
_JOB_STATE_NAMES = {code: name for name, code in _JOB_STATES.items()}
_EVENT_KINDS = {
    pb.JOB_EVENT_KIND_STEP: "step",
    pb.JOB_EVENT_KIND_EVALUATION: "evaluation",
    pb.JOB_EVENT_KIND_STATE: "state",
    pb.JOB_EVENT_KIND_CHECKPOINT: "checkpoint",
}


JOB_STATES = tuple(_JOB_STATES)
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
OPTIMIZERS = tuple(_OPTIMIZERS)


@rich_result()
@dataclass
class JobEvent:
    """One event of a job: ``kind`` is ``step``, ``evaluation``, ``state`` or ``checkpoint``."""

    sequence: int
    kind: str
    step: int
    epoch: int
    total_steps: int
    loss: float
    perplexity: float
    tokens_per_second: float
    elapsed_seconds: float
    learning_rate: float
    valid_perplexity: float
    test_perplexity: float
    #: The new state for ``state`` events, else "".
    state: str
    message: str
    time: float
    #: ``step`` events: the mean total L2 norm of all gradients before clipping over the steps since the
    #: previous step event (``torch.nn.utils.clip_grad_norm_``'s return value); 0 for other kinds and in
    #: histories recorded before it was kept.
    grad_norm: float = 0.0


@rich_result(pictures=("plot_png",), tables={"events": "events"})
@dataclass
class TrainingJob:
    """A training job (its id is also its model's id)."""

    job_id: str
    name: str
    corpus_id: str
    state: str
    #: The hyperparameters with every default filled in.
    config: dict[str, Any]
    step: int
    total_steps: int
    steps_per_epoch: int
    epoch: int
    loss: float
    valid_perplexity: float
    test_perplexity: float
    checkpoint_step: int
    device: str
    error: str
    created_at: float
    updated_at: float
    elapsed_seconds: float
    tokens_per_second: float
    vocab_size: int
    parameters: int
    queue_position: int
    last_sequence: int
    #: The name the corpus was uploaded under (``ptb`` for the Penn Treebank).
    corpus_name: str = ""
    #: The step of the best-validation checkpoint (-1: no evaluation yet) and its validation perplexity.
    best_step: int = -1
    best_valid_perplexity: float = 0.0
    #: Why a finished job stopped (all its steps, or early stopping's step and best); "" until it succeeds.
    stop_reason: str = ""
    #: The event history (``get_job(history=True)``), else None.
    events: list[JobEvent] | None = None
    #: The loss/perplexity curve PNG (``get_job(plot=True)``), else None.
    plot_png: bytes | None = None
    raw: Any = field(repr=False, default=None)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


def _job_event(e: Any) -> JobEvent:
    return JobEvent(
        sequence=e.sequence,
        kind=_EVENT_KINDS.get(e.kind, "unspecified"),
        step=e.step,
        epoch=e.epoch,
        total_steps=e.total_steps,
        loss=e.loss,
        perplexity=e.perplexity,
        tokens_per_second=e.tokens_per_second,
        elapsed_seconds=e.elapsed_seconds,
        learning_rate=e.learning_rate,
        valid_perplexity=e.valid_perplexity,
        test_perplexity=e.test_perplexity,
        state=_JOB_STATE_NAMES.get(e.state, ""),
        message=e.message,
        time=e.time,
        grad_norm=e.grad_norm,
    )


def _config_dict(c: Any) -> dict[str, Any]:
    return {
        "embed_size": c.embed_size,
        "hidden_size": c.hidden_size,
        "num_layers": c.num_layers,
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "sequence_length": c.sequence_length,
        "learning_rate": c.learning_rate,
        "clip_norm": c.clip_norm,
        "optimizer": _OPTIMIZER_NAMES.get(c.optimizer, "adam"),
        "dropout": c.dropout,
        "tie_weights": c.tie_weights,
        "max_steps": c.max_steps,
        "seed": c.seed,
        "device": c.device,
        "lr_decay": c.lr_decay,
        "lr_decay_start_epoch": c.lr_decay_start_epoch,
        "init_range": c.init_range,
        "log_interval": c.log_interval,
        "checkpoint_interval": c.checkpoint_interval,
        "eval_batch_size": c.eval_batch_size,
        "workers": c.workers,
        "patience": c.patience,
    }


def _training_job(j: Any, events: list[JobEvent] | None = None, plot_png: bytes | None = None) -> TrainingJob:
    return TrainingJob(
        job_id=j.job_id,
        name=j.name,
        corpus_id=j.corpus_id,
        state=_JOB_STATE_NAMES.get(j.state, "unspecified"),
        config=_config_dict(j.config),
        step=j.step,
        total_steps=j.total_steps,
        steps_per_epoch=j.steps_per_epoch,
        epoch=j.epoch,
        loss=j.loss,
        valid_perplexity=j.valid_perplexity,
        test_perplexity=j.test_perplexity,
        checkpoint_step=j.checkpoint_step,
        device=j.device,
        error=j.error,
        created_at=j.created_at,
        updated_at=j.updated_at,
        elapsed_seconds=j.elapsed_seconds,
        tokens_per_second=j.tokens_per_second,
        vocab_size=j.vocab_size,
        parameters=j.parameters,
        queue_position=j.queue_position,
        last_sequence=j.last_sequence,
        corpus_name=j.corpus_name,
        best_step=j.best_step,
        best_valid_perplexity=j.best_valid_perplexity,
        stop_reason=j.stop_reason,
        events=events,
        plot_png=plot_png,
        raw=j,
    )


def _training_config(arguments: Mapping[str, Any]) -> pb.TrainingConfig:
    """``start_training``'s arguments as a ``TrainingConfig``: each field takes the argument of its name;
    ``learning_rate`` and ``clip_norm`` stay unset when None (the server's default for the optimizer)."""
    fields = {f.name: arguments[f.name] for f in pb.TrainingConfig.DESCRIPTOR.fields}
    fields["optimizer"] = choice(_OPTIMIZERS, fields["optimizer"], "optimizer")
    for name in ("learning_rate", "clip_norm"):
        if fields[name] is None:
            del fields[name]
    return pb.TrainingConfig(**fields)


def start_training_request(arguments: Mapping[str, Any]) -> pb.StartTrainingRequest:
    """The request of ``start_training`` from its arguments by name (sync and asyncio clients); a new
    UUID as ``request_id`` when it is None."""
    request_id = arguments["request_id"]
    return pb.StartTrainingRequest(
        corpus_id=arguments["corpus_id"],
        config=_training_config(arguments),
        name=arguments["name"],
        request_id=str(uuid.uuid4()) if request_id is None else request_id,
    )


def list_jobs_request(states: Sequence[str], limit: int) -> pb.ListJobsRequest:
    """The request of ``list_jobs``."""
    return pb.ListJobsRequest(states=[choice(_JOB_STATES, s, "states") for s in states], limit=limit)


def job_result(r: Any, request: pb.GetJobRequest) -> TrainingJob:
    """A ``GetJobResponse`` as a ``TrainingJob``, with its events when the request asked for history."""
    events = [_job_event(e) for e in r.events] if request.history else None
    return _training_job(r.job, events, r.plot_png or None)


def job_progress(event: JobEvent) -> Progress:
    """A job's event as the ``Progress`` of ``wait_job``."""
    message = event.message or (f"{event.kind} {event.state}" if event.state else event.kind)
    return Progress(event.step, event.total_steps, "steps", message, event)


class JobMethods(BaseClient):
    """The training-job methods of ``SequenceClient``."""

    _stub: Any

    def start_training(
        self,
        corpus_id: str = "ptb",
        *,
        name: str = "",
        embed_size: int = 0,
        hidden_size: int = 0,
        num_layers: int = 0,
        epochs: int = 0,
        batch_size: int = 0,
        sequence_length: int = 0,
        learning_rate: float | None = None,
        clip_norm: float | None = None,
        optimizer: str = "adam",
        dropout: float = 0.0,
        tie_weights: bool = False,
        max_steps: int = 0,
        seed: int = 0,
        device: str = "",
        lr_decay: float = 0.0,
        lr_decay_start_epoch: int = 0,
        init_range: float = 0.0,
        log_interval: int = 0,
        checkpoint_interval: int = 0,
        eval_batch_size: int = 0,
        workers: int = 0,
        patience: int = 0,
        request_id: str | None = None,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TrainingJob:
        """Start training an LSTM language model on ``corpus_id`` (``ptb`` or an upload's id) as a job.

        Zero/None options take the course notebook's values: embed 128, hidden 1024, 1 layer, 5 epochs,
        batch 20, sequence 30, Adam lr 0.002 (SGD: 20), clip 0.5. See ``TrainingConfig`` in the proto.
        ``patience`` > 0 stops training once that many evaluations in a row (one per epoch) did not lower
        the validation perplexity (the job succeeds; ``stop_reason`` says where); 0: off.

        ``request_id`` is the call's idempotency key (1 to 128 printable ASCII characters, no spaces):
        calling again with the same key and options returns the same job instead of starting another, on
        any replica. None (the default): a new UUID for this call, so the client's own retries are safe;
        "": no key. The same key with other options raises ``NnprobeError`` INVALID_ARGUMENT.
        """
        request = start_training_request(request_arguments(locals()))
        return _training_job(self._unary(self._stub.StartTraining, request, timeout).job)

    def watch_job(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        timeout: float | UseClientDefault | None = None,
        reconnect_seconds: float = 60.0,
    ) -> Iterator[JobEvent]:
        """Yield the job's events after ``after_sequence`` until it stops running (no deadline by
        default; ``timeout`` seconds bound the whole watch, reconnections included). When the stream
        breaks with UNAVAILABLE (the replica serving it shut down and handed the job over, or the server
        restarts), watch again from the last ``event.sequence`` seen, through any address of the client, for
        up to ``reconnect_seconds`` without an event (0: raise at once).

        Raises:
            NnprobeError: NOT_FOUND for an unknown job; UNAVAILABLE when no server answered in time;
                DEADLINE_EXCEEDED when ``timeout`` passes.
        """
        watch = Reconnection(job_id, after_sequence, self._deadline(timeout), reconnect_seconds)
        while True:
            request, remaining = watch.next_request()
            try:
                for response in self._stream(self._stub.WatchJob, request, remaining):
                    yield _job_event(watch.seen(response))
                return
            except NnprobeError as error:
                if not watch.retries(error):
                    raise
            time.sleep(watch.pause())

    def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        limit: int = 0,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> list[TrainingJob]:
        """Jobs, newest first; ``states`` filters (``queued``, ``running``, ``succeeded``, ...)."""
        request = list_jobs_request(states, limit)
        return [_training_job(j) for j in self._unary(self._stub.ListJobs, request, timeout).jobs]

    def get_job(
        self,
        job_id: str,
        *,
        history: bool = False,
        plot: bool = False,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TrainingJob:
        """One job; ``history=True`` adds its events, ``plot=True`` a PNG of its training curves."""
        request = pb.GetJobRequest(job_id=job_id, history=history, plot=plot)
        return job_result(self._unary(self._stub.GetJob, request, timeout), request)

    def cancel_job(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingJob:
        """Cancel a queued or running job (a running job saves a checkpoint first)."""
        return _training_job(
            self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id), timeout).job
        )

    def resume_job(
        self, job_id: str, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> TrainingJob:
        """Continue an interrupted or cancelled job from its last checkpoint."""
        return _training_job(
            self._unary(self._stub.ResumeJob, pb.ResumeJobRequest(job_id=job_id), timeout).job
        )

    def wait_job(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = None,
    ) -> TrainingJob:
        """Watch the job until it stops running (``watch_job``), then return it (``get_job``).

        ``on_progress`` is called with a ``nnprobe.Progress`` per event: ``done`` the job's step of
        ``total`` steps (unit ``steps``), ``detail`` the ``JobEvent``. ``timeout`` bounds the watch, in
        seconds (None, the default: no deadline; ``USE_CLIENT_DEFAULT``: the client's).

        Raises:
            nnprobe.NotFound: an unknown job. nnprobe.DeadlineExceeded: ``timeout`` passed.
        """
        with reporting(progress, on_progress, f"job {job_id}", "steps") as report:
            for event in self.watch_job(job_id, timeout=timeout):
                report(job_progress(event))
        return self.get_job(job_id)
