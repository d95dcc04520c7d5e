"""Client for SequenceService: recurrent forward passes, gradient flow, truncated-BPTT memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from nnprobe import tensors
from nnprobe._client import DEFAULT, FLOAT_DTYPES, BaseClient, _Default, choice
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc
from nnprobe.errors import NnprobeError

_CELLS = {
    "rnn_tanh": pb.CELL_TYPE_RNN_TANH,
    "rnn_relu": pb.CELL_TYPE_RNN_RELU,
    "rnn_linear": pb.CELL_TYPE_RNN_LINEAR,
    "lstm": pb.CELL_TYPE_LSTM,
    "gru": pb.CELL_TYPE_GRU,
}
_CELL_NAMES = {code: name for name, code in _CELLS.items()}
_INIT = {
    "pytorch": pb.INIT_SCHEME_PYTORCH,
    "normal": pb.INIT_SCHEME_NORMAL,
    "orthogonal": pb.INIT_SCHEME_ORTHOGONAL,
}
_INPUTS = {
    "normal": pb.INPUT_DISTRIBUTION_NORMAL,
    "uniform": pb.INPUT_DISTRIBUTION_UNIFORM,
    "constant": pb.INPUT_DISTRIBUTION_CONSTANT,
    "zero": pb.INPUT_DISTRIBUTION_ZERO,
}
_REGIMES = {pb.REGIME_VANISHING: "vanishing", pb.REGIME_STABLE: "stable", pb.REGIME_EXPLODING: "exploding"}
_MODES = {pb.TRUNCATION_MODE_TRUNCATED: "truncated", pb.TRUNCATION_MODE_FULL: "full"}

CELLS = tuple(_CELLS)
INIT_SCHEMES = tuple(_INIT)
INPUT_DISTRIBUTIONS = tuple(_INPUTS)

#: ``on_progress(done, total, message)`` for streamed calls.
ProgressCallback = Callable[[int, int, str], None]


def _optional(message: Any, name: str) -> np.ndarray | None:
    return tensors.to_numpy(getattr(message, name)) if message.HasField(name) else None


@dataclass
class RecurrentResult:
    """A forward pass. Arrays are sequence first: (T, B, ...)."""

    #: h_1..h_T, (T, B, H).
    hidden_states: np.ndarray
    #: c_1..c_T for an LSTM, (T, B, H); None for other cells.
    cell_states: np.ndarray | None
    #: y_t = W_out h_t + b_out, (T, B, O), when the cell has an output layer.
    outputs: np.ndarray | None
    #: |h_t - h_(t-1)|_2, (T, B).
    step_changes: np.ndarray
    #: Per sequence, the first 1-based step from which every change is <= settle_tolerance (-1: never).
    settled_at: list[int]
    settle_tolerance: float
    #: The weights used, under PyTorch's names (plus output.weight / output.bias).
    weights: dict[str, np.ndarray]
    raw: Any = field(repr=False, default=None)


@dataclass
class GradientRun:
    """Gradient flow of one cell at one spectral radius. Lists run over k = 0..T-1 (inputs: 1..T)."""

    cell: str
    target_spectral_radius: float
    spectral_radius: float
    #: gamma_W = |W_hh|_2.
    weight_norm: float
    #: gamma_h; None for LSTM and GRU (no bound reported).
    derivative_bound: float | None
    #: T - k.
    distances: np.ndarray
    #: |dh_T/dh_k|_2.
    jacobian_norms: np.ndarray
    #: (gamma_W gamma_h)^(T-k), or None.
    bounds: np.ndarray | None
    #: |d(h_T, c_T)/d(h_k, c_k)|_2 for an LSTM, else None.
    state_jacobian_norms: np.ndarray | None
    #: |dL/dx_k|_2 for k = 1..T, L = |h_T|^2 / 2.
    input_gradient_norms: np.ndarray
    growth_rate: float
    regime: str
    loss: float
    forget_bias: float


@dataclass
class GradientAnalysis:
    """All runs of an ``analyze_gradients`` call."""

    runs: list[GradientRun]
    sequence_length: int
    hidden_size: int
    input_size: int
    regime_tolerance: float
    #: PNG bytes when ``plot=True``, else None.
    plot_png: bytes | None
    seconds: float
    raw: Any = field(repr=False, default=None)


@dataclass
class TruncationPoint:
    """K chunks in one mode (``truncated`` or ``full``)."""

    chunk_count: int
    mode: str
    saved_bytes: int
    peak_device_bytes: int
    seconds: float
    loss: float
    backward_passes: int


@dataclass
class TruncationComparison:
    """Memory and time of truncated vs full BPTT for every K."""

    points: list[TruncationPoint]
    truncated_slope_bytes: float
    full_slope_bytes: float
    device: str
    parameters: int
    plot_png: bytes | None
    raw: Any = field(repr=False, default=None)

    def series(self, mode: str) -> list[TruncationPoint]:
        """The points of one mode, in K order."""
        return [p for p in self.points if p.mode == mode]


def _gradient_run(run: Any) -> GradientRun:
    has_bound = run.has_bound
    return GradientRun(
        cell=_CELL_NAMES.get(run.cell, str(run.cell)),
        target_spectral_radius=run.target_spectral_radius,
        spectral_radius=run.spectral_radius,
        weight_norm=run.weight_norm,
        derivative_bound=run.derivative_bound if has_bound else None,
        distances=np.array(run.distances, dtype=np.int64),
        jacobian_norms=np.array(run.jacobian_norms, dtype=np.float64),
        bounds=np.array(run.bounds, dtype=np.float64) if has_bound else None,
        state_jacobian_norms=np.array(run.state_jacobian_norms) if run.state_jacobian_norms else None,
        input_gradient_norms=np.array(run.input_gradient_norms, dtype=np.float64),
        growth_rate=run.growth_rate,
        regime=_REGIMES.get(run.regime, "unspecified"),
        loss=run.loss,
        forget_bias=run.forget_bias,
    )


class _SequenceClient(BaseClient):
    """``SequenceClient("localhost:50052")``; see each method for its options.

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure. Streamed methods take ``on_progress(done, total,
    message)``.
    """

    SERVICE = "sequence"
    FULL_NAME = "nnprobe.sequence.v1.SequenceService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = sequence_pb2_grpc.SequenceServiceStub(self._channel)

    def _final(self, events: Iterator[Any], on_progress: ProgressCallback | None) -> Any:
        for event in events:
            if event.HasField("progress"):
                if on_progress is not None:
                    on_progress(event.progress.done, event.progress.total, event.progress.message)
            elif event.HasField("result"):
                return event.result
        raise NnprobeError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")

    def run_recurrent(
        self,
        inputs: np.ndarray,
        *,
        cell: str = "rnn_tanh",
        hidden_size: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        no_bias: bool = False,
        init: str = "pytorch",
        init_scale: float = 1.0,
        seed: int = 0,
        output_size: int = 0,
        forget_bias: float = 0.0,
        initial_hidden: np.ndarray | None = None,
        initial_cell: np.ndarray | None = None,
        dtype: str | None = None,
        settle_tolerance: float | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> RecurrentResult:
        """Run a one-layer ``cell`` (``rnn_tanh``, ``rnn_relu``, ``rnn_linear``, ``lstm``, ``gru``) over
        ``inputs`` (T, B, D).

        ``weights``: PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
        e.g. ``{k: v.numpy() for k, v in torch.nn.LSTM(D, H).state_dict().items()}``) plus optional
        ``output.weight`` (O, H) / ``output.bias`` (O); otherwise drawn with ``init`` (``pytorch``,
        ``normal``, ``orthogonal``), ``init_scale`` and ``seed`` at ``hidden_size``, with an output layer
        of ``output_size``. ``initial_hidden``/``initial_cell``: (B, H). ``dtype`` defaults to float64.
        """
        spec = pb.RecurrentCell(
            cell=choice(_CELLS, cell, "cell"),
            input_size=0,
            hidden_size=hidden_size,
            no_bias=no_bias,
            init=choice(_INIT, init, "init"),
            init_scale=init_scale,
            seed=seed,
            output_size=output_size,
            forget_bias=forget_bias,
        )
        for name, value in (weights or {}).items():
            spec.weights[name].CopyFrom(tensors.to_tensor(value))
        request = pb.RunRecurrentRequest(
            cell=spec,
            inputs=tensors.to_tensor(inputs),
            dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
            settle_tolerance=settle_tolerance or 0.0,
        )
        if initial_hidden is not None:
            request.initial_hidden.CopyFrom(tensors.to_tensor(initial_hidden))
        if initial_cell is not None:
            request.initial_cell.CopyFrom(tensors.to_tensor(initial_cell))
        r = self._unary(self._stub.RunRecurrent, request, timeout)
        return RecurrentResult(
            hidden_states=tensors.to_numpy(r.hidden_states),
            cell_states=_optional(r, "cell_states"),
            outputs=_optional(r, "outputs"),
            step_changes=tensors.to_numpy(r.step_changes),
            settled_at=list(r.settled_at),
            settle_tolerance=r.settle_tolerance,
            weights={name: tensors.to_numpy(value) for name, value in sorted(r.weights.items())},
            raw=r,
        )

    def analyze_gradients(
        self,
        *,
        cells: Sequence[str] = ("rnn_tanh",),
        spectral_radii: Sequence[float] = (),
        hidden_size: int = 0,
        sequence_length: int = 0,
        input_size: int = 0,
        input_distribution: str = "normal",
        input_scale: float = 1.0,
        seed: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
        init: str = "pytorch",
        init_scale: float = 1.0,
        forget_bias: float = 0.0,
        random_initial_state: bool = False,
        dtype: str | None = None,
        regime_tolerance: float | None = None,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> GradientAnalysis:
        """|dh_T/dh_k|_2 (exact Jacobian products), the bound (gamma_W gamma_h)^(T-k), rho(W_hh), the
        fitted per-step rate, the regime and |dL/dx_k| for every cell of ``cells`` at every target
        spectral radius of ``spectral_radii`` (W_hh's gate blocks rescaled to it).

        Give ``weights`` (one cell; PyTorch names) to analyse them as they are (``spectral_radii`` empty)
        or rescaled. ``input_distribution``: ``normal``, ``uniform``, ``constant``, ``zero``.
        ``plot=True`` returns a PNG of log |dh_T/dh_k| against T - k.
        """
        request = pb.AnalyzeGradientsRequest(
            cells=[choice(_CELLS, c, "cells") for c in cells],
            hidden_size=hidden_size,
            input_size=input_size,
            sequence_length=sequence_length,
            input_distribution=choice(_INPUTS, input_distribution, "input_distribution"),
            input_scale=input_scale,
            seed=seed,
            spectral_radii=list(spectral_radii),
            init=choice(_INIT, init, "init"),
            init_scale=init_scale,
            forget_bias=forget_bias,
            dtype=choice(FLOAT_DTYPES, dtype, "dtype"),
            regime_tolerance=regime_tolerance or 0.0,
            plot=plot,
            random_initial_state=random_initial_state,
        )
        for name, value in (weights or {}).items():
            request.weights[name].CopyFrom(tensors.to_tensor(value))
        events = self._stream(self._stub.AnalyzeGradients, request, timeout)
        r = self._final(events, on_progress)
        return GradientAnalysis(
            runs=[_gradient_run(run) for run in r.runs],
            sequence_length=r.sequence_length,
            hidden_size=r.hidden_size,
            input_size=r.input_size,
            regime_tolerance=r.regime_tolerance,
            plot_png=r.plot_png or None,
            seconds=r.seconds,
            raw=r,
        )

    def compare_truncation(
        self,
        *,
        chunk_counts: Sequence[int] = (),
        vocab_size: int = 0,
        embed_size: int = 0,
        hidden_size: int = 0,
        batch_size: int = 0,
        chunk_length: int = 0,
        seed: int = 0,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | _Default | None = DEFAULT,
    ) -> TruncationComparison:
        """Memory held for backward and time of K chunks with ``detach()`` between them (truncated) and
        without (full), for every K of ``chunk_counts`` (default [1, 2, 4, 8]).

        The model is embedding -> LSTM -> linear; sizes default to the course's language model (vocab
        10000, embed 128, hidden 1024, batch 20, chunk length 30). ``plot=True`` returns a PNG.
        """
        request = pb.CompareTruncationRequest(
            vocab_size=vocab_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            batch_size=batch_size,
            chunk_length=chunk_length,
            chunk_counts=list(chunk_counts),
            seed=seed,
            plot=plot,
        )
        events = self._stream(self._stub.CompareTruncation, request, timeout)
        r = self._final(events, on_progress)
        return TruncationComparison(
            points=[
                TruncationPoint(
                    chunk_count=p.chunk_count,
                    mode=_MODES.get(p.mode, "unspecified"),
                    saved_bytes=p.saved_bytes,
                    peak_device_bytes=p.peak_device_bytes,
                    seconds=p.seconds,
                    loss=p.loss,
                    backward_passes=p.backward_passes,
                )
                for p in r.points
            ],
            truncated_slope_bytes=r.truncated_slope_bytes,
            full_slope_bytes=r.full_slope_bytes,
            device=r.device,
            parameters=r.parameters,
            plot_png=r.plot_png or None,
            raw=r,
        )


# -- language model --------------------------------------------------------------------------------------
_SPLITS = {"train": pb.CORPUS_SPLIT_TRAIN, "valid": pb.CORPUS_SPLIT_VALID, "test": pb.CORPUS_SPLIT_TEST}
_SPLIT_NAMES = {code: name for name, code in _SPLITS.items()}
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
_STRATEGIES = {"multinomial": pb.SAMPLING_STRATEGY_MULTINOMIAL, "greedy": pb.SAMPLING_STRATEGY_GREEDY}
_METRICS = {"euclidean": pb.DISTANCE_METRIC_EUCLIDEAN, "cosine": pb.DISTANCE_METRIC_COSINE}
_METRIC_NAMES = {code: name for name, code in _METRICS.items()}

JOB_STATES = tuple(_JOB_STATES)
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
OPTIMIZERS = tuple(_OPTIMIZERS)
STRATEGIES = tuple(_STRATEGIES)
METRICS = tuple(_METRICS)
SPLITS = tuple(_SPLITS)


@dataclass
class CorpusInfo:
    """A corpus on the server: ``ptb`` or an upload."""

    corpus_id: str
    name: str
    vocab_size: int
    #: split -> tokens (``<eos>`` included).
    tokens: dict[str, int]
    #: split -> words that became ``<unk>``.
    unknown_tokens: dict[str, int]
    location: str
    raw: Any = field(repr=False, default=None)


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
    #: The event history (``get_job(history=True)``), else None.
    events: list[JobEvent] | None = None
    #: The loss/perplexity curve PNG (``get_job(plot=True)``), else None.
    plot_png: bytes | None = None
    raw: Any = field(repr=False, default=None)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass
class Perplexity:
    """A model's perplexity on one split."""

    perplexity: float
    loss: float
    tokens: int
    step: int
    split: str
    seconds: float
    raw: Any = field(repr=False, default=None)


@dataclass
class SampleResult:
    """Generated words."""

    words: list[str]
    word_ids: list[int]
    #: Words joined by spaces, a line break for every ``<eos>``.
    text: str
    prompt_ids: list[int]
    log_probability: float
    step: int
    raw: Any = field(repr=False, default=None)


@dataclass
class EmbeddingDistance:
    """Distances between two words' input embeddings."""

    word_a: str
    word_b: str
    euclidean: float
    cosine_similarity: float
    cosine_distance: float
    id_a: int
    id_b: int
    norm_a: float
    norm_b: float
    step: int
    raw: Any = field(repr=False, default=None)


@dataclass
class NearestWords:
    """The k nearest words to ``word``: ``neighbors`` is a list of (word, id, distance), nearest first."""

    word: str
    word_id: int
    metric: str
    neighbors: list[tuple[str, int, float]]
    step: int
    raw: Any = field(repr=False, default=None)


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
        events=events,
        plot_png=plot_png,
        raw=j,
    )


class _LanguageModelMethods:
    """The language-model methods of ``SequenceClient``."""

    _stub: Any
    _unary: Callable[..., Any]
    _stream: Callable[..., Iterator[Any]]

    def upload_corpus(
        self,
        train: str,
        valid: str = "",
        test: str = "",
        *,
        name: str = "",
        chunk_bytes: int = 1 << 20,
        timeout: float | _Default | None = DEFAULT,
    ) -> CorpusInfo:
        """Upload a corpus (text of each split: whitespace-separated words, one sentence per line),
        streamed in chunks of about ``chunk_bytes``. The same text gives the same id."""

        def chunks() -> Iterator[pb.UploadCorpusRequest]:
            yield pb.UploadCorpusRequest(name=name, split=pb.CORPUS_SPLIT_TRAIN, text="")
            for split, text in (("train", train), ("valid", valid), ("test", test)):
                for start in range(0, len(text), chunk_bytes):
                    yield pb.UploadCorpusRequest(split=_SPLITS[split], text=text[start : start + chunk_bytes])

        r = self._unary(self._stub.UploadCorpus, chunks(), timeout).corpus
        return CorpusInfo(
            corpus_id=r.corpus_id,
            name=r.name,
            vocab_size=r.vocab_size,
            tokens={_SPLIT_NAMES[s.split]: s.tokens for s in r.splits},
            unknown_tokens={_SPLIT_NAMES[s.split]: s.unknown_tokens for s in r.splits},
            location=r.location,
            raw=r,
        )

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
        timeout: float | _Default | None = DEFAULT,
    ) -> TrainingJob:
        """Start training an LSTM language model on ``corpus_id`` (``ptb`` or an upload's id) as a job.

        Zero/None options take the course notebook's values: embed 128, hidden 1024, 1 layer, 5 epochs,
        batch 20, sequence 30, Adam lr 0.002 (SGD: 20), clip 0.5. See ``TrainingConfig`` in the proto.
        """
        config = pb.TrainingConfig(
            embed_size=embed_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            epochs=epochs,
            batch_size=batch_size,
            sequence_length=sequence_length,
            optimizer=choice(_OPTIMIZERS, optimizer, "optimizer"),
            dropout=dropout,
            tie_weights=tie_weights,
            max_steps=max_steps,
            seed=seed,
            device=device,
            lr_decay=lr_decay,
            lr_decay_start_epoch=lr_decay_start_epoch,
            init_range=init_range,
            log_interval=log_interval,
            checkpoint_interval=checkpoint_interval,
            eval_batch_size=eval_batch_size,
            workers=workers,
        )
        if learning_rate is not None:
            config.learning_rate = learning_rate
        if clip_norm is not None:
            config.clip_norm = clip_norm
        request = pb.StartTrainingRequest(corpus_id=corpus_id, config=config, name=name)
        return _training_job(self._unary(self._stub.StartTraining, request, timeout).job)

    def watch_job(
        self, job_id: str, *, after_sequence: int = 0, timeout: float | _Default | None = None
    ) -> Iterator[JobEvent]:
        """Yield the job's events after ``after_sequence`` until it stops running (no deadline by
        default). After a disconnect, watch again with the last ``event.sequence`` seen."""
        request = pb.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        for response in self._stream(self._stub.WatchJob, request, timeout):
            yield _job_event(response.event)

    watch = watch_job

    def list_jobs(
        self, *, states: Sequence[str] = (), limit: int = 0, timeout: float | _Default | None = DEFAULT
    ) -> list[TrainingJob]:
        """Jobs, newest first; ``states`` filters (``queued``, ``running``, ``succeeded``, ...)."""
        request = pb.ListJobsRequest(states=[choice(_JOB_STATES, s, "states") for s in states], limit=limit)
        return [_training_job(j) for j in self._unary(self._stub.ListJobs, request, timeout).jobs]

    def get_job(
        self,
        job_id: str,
        *,
        history: bool = False,
        plot: bool = False,
        timeout: float | _Default | None = DEFAULT,
    ) -> TrainingJob:
        """One job; ``history=True`` adds its events, ``plot=True`` a PNG of its training curves."""
        r = self._unary(
            self._stub.GetJob, pb.GetJobRequest(job_id=job_id, history=history, plot=plot), timeout
        )
        events = [_job_event(e) for e in r.events] if history else None
        return _training_job(r.job, events, r.plot_png or None)

    def cancel_job(self, job_id: str, *, timeout: float | _Default | None = DEFAULT) -> TrainingJob:
        """Cancel a queued or running job (a running job saves a checkpoint first)."""
        return _training_job(
            self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id), timeout).job
        )

    def resume_job(self, job_id: str, *, timeout: float | _Default | None = DEFAULT) -> TrainingJob:
        """Continue an interrupted or cancelled job from its last checkpoint."""
        return _training_job(
            self._unary(self._stub.ResumeJob, pb.ResumeJobRequest(job_id=job_id), timeout).job
        )

    def wait_job(self, job_id: str, *, on_event: Callable[[JobEvent], None] | None = None) -> TrainingJob:
        """Watch until the job stops running; return it. ``on_event`` sees every event."""
        for event in self.watch_job(job_id):
            if on_event is not None:
                on_event(event)
        return self.get_job(job_id)

    def evaluate_perplexity(
        self,
        job_id: str,
        *,
        split: str = "valid",
        batch_size: int = 0,
        timeout: float | _Default | None = DEFAULT,
    ) -> Perplexity:
        """Perplexity of the job's model (final, or last checkpoint) on ``split`` of its corpus."""
        request = pb.EvaluatePerplexityRequest(
            job_id=job_id, split=choice(_SPLITS, split, "split"), batch_size=batch_size
        )
        r = self._unary(self._stub.EvaluatePerplexity, request, timeout)
        return Perplexity(
            r.perplexity, r.loss, r.tokens, r.step, _SPLIT_NAMES.get(r.split, split), r.seconds, r
        )

    def sample(
        self,
        job_id: str,
        *,
        prompt: str = "",
        start_word_id: int | None = None,
        num_words: int = 50,
        strategy: str = "multinomial",
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int = 0,
        timeout: float | _Default | None = DEFAULT,
    ) -> SampleResult:
        """Generate ``num_words`` words after ``prompt`` (or from ``start_word_id``; the notebook used
        100), ``multinomial`` or ``greedy``. The same request gives the same words.

        ``temperature`` >= 0 (``None``: the server's 1; 0 is greedy decoding), ``top_k`` >= 0 (0: all
        words), ``top_p`` in (0, 1] (``None``: 1). Values are sent as given; the server checks them and
        answers INVALID_ARGUMENT naming the field.
        """
        request = pb.SampleRequest(
            job_id=job_id,
            prompt=prompt,
            num_words=num_words,
            strategy=choice(_STRATEGIES, strategy, "strategy"),
            top_k=top_k,
            seed=seed,
        )
        if start_word_id is not None:
            request.start_word_id = start_word_id
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        r = self._unary(self._stub.Sample, request, timeout)
        return SampleResult(
            list(r.words), list(r.word_ids), r.text, list(r.prompt_ids), r.log_probability, r.step, r
        )

    def embedding_distance(
        self, job_id: str, word_a: str, word_b: str, *, timeout: float | _Default | None = DEFAULT
    ) -> EmbeddingDistance:
        """Euclidean and cosine distance between two words' input embeddings."""
        request = pb.EmbeddingDistanceRequest(job_id=job_id, word_a=word_a, word_b=word_b)
        r = self._unary(self._stub.EmbeddingDistance, request, timeout)
        return EmbeddingDistance(
            word_a,
            word_b,
            r.euclidean,
            r.cosine_similarity,
            r.cosine_distance,
            r.id_a,
            r.id_b,
            r.norm_a,
            r.norm_b,
            r.step,
            r,
        )

    distance = embedding_distance

    def nearest_words(
        self,
        job_id: str,
        word: str,
        *,
        k: int = 10,
        metric: str = "euclidean",
        timeout: float | _Default | None = DEFAULT,
    ) -> NearestWords:
        """The ``k`` words whose embeddings are nearest to ``word``'s (``euclidean`` or ``cosine``)."""
        request = pb.NearestWordsRequest(
            job_id=job_id, word=word, k=k, metric=choice(_METRICS, metric, "metric")
        )
        r = self._unary(self._stub.NearestWords, request, timeout)
        return NearestWords(
            word,
            r.word_id,
            _METRIC_NAMES.get(r.metric, metric),
            [(n.word, n.word_id, n.distance) for n in r.neighbors],
            r.step,
            r,
        )

    nearest = nearest_words


class SequenceClient(_LanguageModelMethods, _SequenceClient):
    """``SequenceClient("localhost:50052")``: recurrent networks and gradient flow (``run_recurrent``,
    ``analyze_gradients``, ``compare_truncation``) and the LSTM language model (``upload_corpus``,
    ``start_training``, ``watch``, ``list_jobs``, ``get_job``, ``cancel_job``, ``resume_job``,
    ``evaluate_perplexity``, ``sample``, ``distance``, ``nearest``).

    Every method takes ``timeout`` (seconds; ``None`` for no deadline) overriding the client default,
    and raises ``nnprobe.NnprobeError`` on failure. Streamed methods take ``on_progress(done, total,
    message)``.
    """
