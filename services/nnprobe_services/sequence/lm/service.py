"""The language-model RPCs of SequenceService: validate, convert protobuf to plain values, call the core
(corpus, jobs, training, sampling, embeddings), convert back. ``SequenceServicer`` delegates here."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import grpc
import torch
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.lm import distributed, embeddings, plots, sampling
from nnprobe_services.sequence.lm.corpus import EOS, SPLITS, Corpus, CorpusStore
from nnprobe_services.sequence.lm.jobs import JobManager, Leases, default_replica_id
from nnprobe_services.sequence.lm.metrics import JobCollector
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.store import EventRecord, JobRecord
from nnprobe_services.sequence.lm.training import evaluate, perplexity, steps_per_epoch
from nnprobe_services.server import validation as valid
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.server.device import resolve_device
from nnprobe_services.server.metrics import metrics_for

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
DEFAULT_LR = {"adam": 0.002, "sgd": 20.0}
#: Most data-parallel worker processes one job may use.
MAX_WORKERS = 64


class LanguageModelService:
    """The language-model half of SequenceService."""

    def __init__(self, config: ServerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.corpora = CorpusStore(
            config.data_dir, config.cache_dir, config.ptb_dir, config.ptb_download_timeout
        )
        self.jobs = JobManager(
            config.data_dir,
            self.corpora,
            device,
            max_queued=config.max_queued_jobs,
            runner=distributed.run_job,
            database_url=config.database_url,
            leases=Leases(
                config.replica_id or default_replica_id(),
                config.job_lease_seconds,
                config.job_poll_seconds,
                config.max_job_takeovers,
            ),
        )
        metrics_for(config.service).replace_collector("training_jobs", JobCollector(self.jobs.store))

    def close(self) -> None:
        """Stop this replica's jobs at a step boundary (checkpointed, INTERRUPTED) and release the store."""
        self.jobs.close()

    # -- corpora -------------------------------------------------------------------------------------
    def upload_corpus(self, requests: Iterator[pb.UploadCorpusRequest], context: grpc.ServicerContext):
        parts: dict[str, list[str]] = {}
        name = ""
        size = 0
        for index, request in enumerate(requests):
            if not context.is_active():
                return pb.UploadCorpusResponse()
            name = name or request.name
            code = valid.enum_value(request.split, pb.CorpusSplit, f"requests[{index}].split", 0)
            if code == pb.CORPUS_SPLIT_UNSPECIFIED:
                raise InvalidArgument(
                    "is required: CORPUS_SPLIT_TRAIN, CORPUS_SPLIT_VALID or CORPUS_SPLIT_TEST",
                    field=f"requests[{index}].split",
                )
            size += len(request.text.encode("utf-8"))
            if size > self.config.max_corpus_bytes:
                raise ResourceExhausted(
                    f"the corpus exceeds {self.config.max_corpus_bytes} bytes, the limit (max_corpus_bytes)",
                    field="text",
                )
            parts.setdefault(SPLIT_NAMES[code], []).append(request.text)
        corpus = self.corpora.save(name, {split: "".join(chunks) for split, chunks in parts.items()})
        return pb.UploadCorpusResponse(corpus=_corpus_info(corpus))

    # -- jobs ----------------------------------------------------------------------------------------
    def start_training(self, request: pb.StartTrainingRequest, context: grpc.ServicerContext):
        if not request.corpus_id:
            raise InvalidArgument("is required: 'ptb' or an id from UploadCorpus", field="corpus_id")
        corpus = self.corpora.get(request.corpus_id)
        config, device = self._training_config(request.config, corpus)
        job = self.jobs.start(request.corpus_id, config, request.name, device)
        return pb.StartTrainingResponse(job=self._job(job))

    def watch_job(self, request: pb.WatchJobRequest, context: grpc.ServicerContext):
        if request.after_sequence < 0:
            raise InvalidArgument(f"must be >= 0, got {request.after_sequence}", field="after_sequence")
        for event in self.jobs.watch(request.job_id, request.after_sequence, context.is_active):
            yield pb.WatchJobResponse(event=_event(event))

    def list_jobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext):
        states = []
        for index, code in enumerate(request.states):
            valid.enum_value(code, pb.JobState, f"states[{index}]", 0)
            if code != pb.JOB_STATE_UNSPECIFIED:
                states.append(STATE_NAMES[code])
        limit = valid.positive(request.limit, "limit", default=100, maximum=10_000)
        return pb.ListJobsResponse(jobs=[self._job(job) for job in self.jobs.store.jobs(states, limit)])

    def get_job(self, request: pb.GetJobRequest, context: grpc.ServicerContext):
        job = self.jobs.get(request.job_id)
        response = pb.GetJobResponse(job=self._job(job))
        if request.history or request.plot:
            history = self._history(job.job_id)
            if request.history:
                response.events.extend(_event(e) for e in history)
            if request.plot:
                title = f"{job.job_id} on {job.corpus_id} ({job.state}, step {job.step}/{job.total_steps})"
                response.plot_png = plots.training_curves(history, title)
        return response

    def cancel_job(self, request: pb.CancelJobRequest, context: grpc.ServicerContext):
        return pb.CancelJobResponse(job=self._job(self.jobs.cancel(request.job_id)))

    def resume_job(self, request: pb.ResumeJobRequest, context: grpc.ServicerContext):
        return pb.ResumeJobResponse(job=self._job(self.jobs.resume(request.job_id)))

    # -- using a model -------------------------------------------------------------------------------
    def evaluate_perplexity(self, request: pb.EvaluatePerplexityRequest, context: grpc.ServicerContext):
        code: Any = valid.enum_value(request.split, pb.CorpusSplit, "split", pb.CORPUS_SPLIT_VALID)
        loaded = self.jobs.model(request.job_id, self.device)
        corpus = self.corpora.get(loaded.corpus_id)
        split = corpus.split(SPLIT_NAMES[code])
        batch = valid.positive(request.batch_size, "batch_size", default=loaded.config.eval_batch_size)
        if split.tokens < 2 * batch:
            raise InvalidArgument(
                f"the {SPLIT_NAMES[code]} split has {split.tokens} tokens, too few for {batch} streams",
                field="batch_size",
            )
        started = time.perf_counter()
        try:
            loss, tokens = evaluate(
                loaded.model,
                split.ids,
                batch,
                loaded.config.sequence_length,
                self.device,
                lambda: not context.is_active(),
            )
        except Cancelled:
            raise
        return pb.EvaluatePerplexityResponse(
            perplexity=perplexity(loss),
            loss=loss,
            tokens=tokens,
            step=loaded.step,
            split=code,
            seconds=time.perf_counter() - started,
        )

    def sample(self, request: pb.SampleRequest, context: grpc.ServicerContext):
        loaded = self.jobs.model(request.job_id, self.device)
        num_words = valid.positive(
            request.num_words, "num_words", default=50, maximum=self.config.max_sample_words
        )
        strategy = valid.enum_value(
            request.strategy, pb.SamplingStrategy, "strategy", pb.SAMPLING_STRATEGY_MULTINOMIAL
        )
        temperature = request.temperature or 1.0
        if not math.isfinite(temperature) or temperature <= 0:
            raise InvalidArgument(
                f"must be a finite number > 0, got {request.temperature}", field="temperature"
            )
        if request.top_k < 0:
            raise InvalidArgument(f"must be >= 0 (0 keeps all words), got {request.top_k}", field="top_k")
        if not 0 <= request.top_p <= 1:
            raise InvalidArgument(f"must be in [0, 1] (0 means 1), got {request.top_p}", field="top_p")
        if request.prompt.strip():
            if request.HasField("start_word_id"):
                raise InvalidArgument(
                    "give either a prompt or a start_word_id, not both", field="start_word_id"
                )
            prompt = [embeddings.word_id(loaded.index, w, "prompt") for w in request.prompt.split()]
        elif request.HasField("start_word_id"):
            if not 0 <= request.start_word_id < len(loaded.vocab):
                raise InvalidArgument(
                    f"must be in [0, {len(loaded.vocab)}), got {request.start_word_id}", field="start_word_id"
                )
            prompt = [request.start_word_id]
        else:
            prompt = [loaded.index[EOS]]
        result = sampling.sample(
            loaded.model,
            prompt,
            num_words,
            greedy=strategy == pb.SAMPLING_STRATEGY_GREEDY,
            temperature=temperature,
            top_k=request.top_k,
            top_p=request.top_p or 1.0,
            seed=request.seed,
            device=self.device,
        )
        words = [loaded.vocab[i] for i in result.word_ids]
        text = "".join("\n" if w == EOS else w + " " for w in words)
        return pb.SampleResponse(
            words=words,
            word_ids=result.word_ids,
            text=text,
            prompt_ids=prompt,
            log_probability=result.log_probability,
            step=loaded.step,
        )

    def embedding_distance(self, request: pb.EmbeddingDistanceRequest, context: grpc.ServicerContext):
        loaded = self.jobs.model(request.job_id, self.device)
        a = embeddings.word_id(loaded.index, request.word_a, "word_a")
        b = embeddings.word_id(loaded.index, request.word_b, "word_b")
        d = embeddings.distance(loaded.model.embed.weight.detach(), a, b)
        return pb.EmbeddingDistanceResponse(
            euclidean=d.euclidean,
            cosine_similarity=d.cosine_similarity,
            cosine_distance=1 - d.cosine_similarity,
            id_a=a,
            id_b=b,
            norm_a=d.norm_a,
            norm_b=d.norm_b,
            step=loaded.step,
        )

    def nearest_words(self, request: pb.NearestWordsRequest, context: grpc.ServicerContext):
        loaded = self.jobs.model(request.job_id, self.device)
        metric: Any = valid.enum_value(
            request.metric, pb.DistanceMetric, "metric", pb.DISTANCE_METRIC_EUCLIDEAN
        )
        k = valid.positive(request.k, "k", default=10, maximum=len(loaded.vocab) - 1)
        query = embeddings.word_id(loaded.index, request.word, "word")
        name = "cosine" if metric == pb.DISTANCE_METRIC_COSINE else "euclidean"
        found = embeddings.nearest(loaded.model.embed.weight.detach(), query, k, name)
        return pb.NearestWordsResponse(
            neighbors=[pb.Neighbor(word=loaded.vocab[i], word_id=i, distance=d) for i, d in found],
            word_id=query,
            metric=metric,
            step=loaded.step,
        )

    # -- helpers -------------------------------------------------------------------------------------
    def _history(self, job_id: str) -> list[EventRecord]:
        events: list[EventRecord] = []
        while True:
            batch = self.jobs.store.events(job_id, events[-1].sequence if events else 0, limit=10_000)
            events.extend(batch)
            if len(batch) < 10_000:
                return events

    def _job(self, job: JobRecord) -> pb.Job:
        return pb.Job(
            job_id=job.job_id,
            name=job.name,
            corpus_id=job.corpus_id,
            state=STATE_CODES[job.state],
            config=_config_message(TrainingConfig.from_dict(job.config)),
            step=job.step,
            total_steps=job.total_steps,
            steps_per_epoch=job.steps_per_epoch,
            epoch=job.epoch,
            loss=job.loss,
            valid_perplexity=job.valid_perplexity,
            test_perplexity=job.test_perplexity,
            checkpoint_step=job.checkpoint_step,
            device=job.device,
            error=job.error,
            created_at=job.created_at,
            updated_at=job.updated_at,
            elapsed_seconds=job.elapsed_seconds,
            tokens_per_second=job.tokens_per_second,
            vocab_size=job.vocab_size,
            parameters=job.parameters,
            queue_position=self.jobs.queue_position(job),
            last_sequence=job.last_sequence,
        )

    def _training_config(
        self, message: pb.TrainingConfig, corpus: Corpus
    ) -> tuple[TrainingConfig, torch.device]:
        limit = self.config.max_tensor_elements
        f = "config."
        optimizer_code = valid.enum_value(message.optimizer, pb.Optimizer, f + "optimizer", pb.OPTIMIZER_ADAM)
        optimizer = OPTIMIZERS[optimizer_code]
        embed = valid.positive(message.embed_size, f + "embed_size", default=128, maximum=limit)
        hidden = valid.positive(message.hidden_size, f + "hidden_size", default=1024, maximum=limit)
        layers = valid.positive(message.num_layers, f + "num_layers", default=1, maximum=64)
        epochs = valid.positive(message.epochs, f + "epochs", default=5, maximum=100_000)
        batch = valid.positive(message.batch_size, f + "batch_size", default=20, maximum=limit)
        length = valid.positive(message.sequence_length, f + "sequence_length", default=30, maximum=limit)
        lr = message.learning_rate if message.HasField("learning_rate") else DEFAULT_LR[optimizer]
        if not math.isfinite(lr) or lr <= 0:
            raise InvalidArgument(f"must be a finite number > 0, got {lr}", field=f + "learning_rate")
        clip = message.clip_norm if message.HasField("clip_norm") else 0.5
        if not math.isfinite(clip) or clip < 0:
            raise InvalidArgument(
                f"must be a finite number >= 0 (0: no clipping), got {clip}", field=f + "clip_norm"
            )
        if not 0 <= message.dropout < 1:
            raise InvalidArgument(f"must be in [0, 1), got {message.dropout}", field=f + "dropout")
        if message.tie_weights and embed != hidden:
            raise InvalidArgument(
                f"needs embed_size == hidden_size, got {embed} and {hidden}", field=f + "tie_weights"
            )
        if message.max_steps < 0:
            raise InvalidArgument(
                f"must be >= 0 (0: no limit), got {message.max_steps}", field=f + "max_steps"
            )
        decay = message.lr_decay or 1.0
        if not 0 < decay <= 1:
            raise InvalidArgument(
                f"must be in (0, 1] (0 means 1), got {message.lr_decay}", field=f + "lr_decay"
            )
        if message.lr_decay_start_epoch < 0:
            raise InvalidArgument(
                f"must be >= 0, got {message.lr_decay_start_epoch}", field=f + "lr_decay_start_epoch"
            )
        if not math.isfinite(message.init_range) or message.init_range < 0:
            raise InvalidArgument(
                f"must be a finite number >= 0, got {message.init_range}", field=f + "init_range"
            )
        log_interval = valid.positive(message.log_interval, f + "log_interval", default=10)
        checkpoint_interval = valid.positive(
            message.checkpoint_interval, f + "checkpoint_interval", default=200
        )
        eval_batch = valid.positive(message.eval_batch_size, f + "eval_batch_size", default=10, maximum=limit)
        workers = valid.positive(message.workers, f + "workers", default=1, maximum=MAX_WORKERS)
        if batch % workers:
            raise InvalidArgument(
                f"{workers} workers must divide batch_size {batch} (each takes batch_size / workers streams)",
                field=f + "workers",
            )
        if workers > 1 and self.jobs.runner is None:
            raise FailedPrecondition("this server does not run data-parallel jobs", field=f + "workers")
        device = self.device
        if message.device:
            try:
                device = resolve_device(message.device)
            except (ValueError, RuntimeError) as error:
                raise InvalidArgument(str(error), field=f + "device") from None
        if workers > 1:
            _check_workers_fit(workers, device, f + "workers")
        train = corpus.splits["train"].tokens
        if steps_per_epoch(train, batch, length) < 1:
            raise InvalidArgument(
                f"batch_size x (sequence_length + 1) = {batch} x {length + 1} needs more than the "
                f"{train} tokens of corpus {corpus.corpus_id}'s train split",
                field=f + "batch_size",
            )
        for name in ("valid", "test"):
            if name in corpus.splits and corpus.splits[name].tokens < 2 * eval_batch:
                raise InvalidArgument(
                    f"{name} has {corpus.splits[name].tokens} tokens: too few for {eval_batch} streams",
                    field=f + "eval_batch_size",
                )
        vocab = corpus.vocab_size
        parameters = vocab * embed + layers * 4 * hidden * (embed + hidden + 2) + vocab * (hidden + 1)
        if parameters > limit:
            raise ResourceExhausted(
                f"the model would have {parameters} parameters; the limit is {limit} (max_tensor_elements)",
                field=f + "hidden_size",
            )
        activations = batch * length * max(vocab, 4 * hidden)
        if activations > limit:
            raise ResourceExhausted(
                f"batch x sequence x max(vocab, 4 hidden) = {activations} activation elements exceed {limit}",
                field=f + "batch_size",
            )
        config = TrainingConfig(
            embed_size=embed,
            hidden_size=hidden,
            num_layers=layers,
            epochs=epochs,
            batch_size=batch,
            sequence_length=length,
            learning_rate=lr,
            clip_norm=clip,
            optimizer=optimizer,
            dropout=message.dropout,
            tie_weights=message.tie_weights,
            max_steps=message.max_steps,
            seed=message.seed,
            device=str(device),
            lr_decay=decay,
            lr_decay_start_epoch=message.lr_decay_start_epoch,
            init_range=message.init_range,
            log_interval=log_interval,
            checkpoint_interval=checkpoint_interval,
            eval_batch_size=eval_batch,
            workers=workers,
        )
        return config, device


def _check_workers_fit(workers: int, device: torch.device, field: str) -> None:
    """Data-parallel workers run on the CPU (gloo) or one GPU each (NCCL)."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        first = device.index or 0
        if first + workers > count:
            raise FailedPrecondition(
                f"{workers} workers need one GPU each from {device}, and this server has {count}", field=field
            )
    elif device.type != "cpu":
        raise FailedPrecondition(f"data-parallel workers run on cpu or cuda, not {device}", field=field)


def _config_message(config: TrainingConfig) -> pb.TrainingConfig:
    return pb.TrainingConfig(
        embed_size=config.embed_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        epochs=config.epochs,
        batch_size=config.batch_size,
        sequence_length=config.sequence_length,
        learning_rate=config.learning_rate,
        clip_norm=config.clip_norm,
        optimizer=OPTIMIZER_CODES[config.optimizer],
        dropout=config.dropout,
        tie_weights=config.tie_weights,
        max_steps=config.max_steps,
        seed=config.seed,
        device=config.device,
        lr_decay=config.lr_decay,
        lr_decay_start_epoch=config.lr_decay_start_epoch,
        init_range=config.init_range,
        log_interval=config.log_interval,
        checkpoint_interval=config.checkpoint_interval,
        eval_batch_size=config.eval_batch_size,
        workers=config.workers,
    )


def _event(event: EventRecord) -> pb.JobEvent:
    p = event.payload
    return pb.JobEvent(
        sequence=event.sequence,
        kind=KIND_CODES[event.kind],
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
        time=event.time,
    )


def _corpus_info(corpus: Corpus) -> pb.CorpusInfo:
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
