"""SequenceService on the event loop: each handler converts the request to plain values (``requests``,
``messages``), runs one core function (``rnn``, ``gradients``, ``truncation``, the language model under
``lm/``) and converts the result back.

Computation (tensor decoding, PyTorch, plots, corpus tokenising, checkpoint loading) runs in the compute
pool, which sets the call's stop signal when the client cancels or the deadline passes. Job bookkeeping
(ListJobs, GetJob, CancelJob, WatchJob) reads the job store with ``asyncio.to_thread`` and waits for
changes with asyncio notifications, so it answers while the pool is busy and an idle WatchJob stream holds
no thread. On shutdown the drain hook stops the running jobs at a step boundary, checkpoints them and hands
them back to the shared queue; WatchJob streams on this replica deliver that hand-over event and then end
with UNAVAILABLE, so their clients watch on from the same sequence through another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc

from nnprobe_services.errors import InvalidArgument, ResourceExhausted, ShouldStop, Unavailable
from nnprobe_services.sequence.jobs.metrics import JobCollector
from nnprobe_services.sequence.jobs.replica import Leases, default_replica_id
from nnprobe_services.sequence.jobs.store import ACTIVE, EventRecord, JobRecord
from nnprobe_services.sequence.lm import convert as messages
from nnprobe_services.sequence.lm import plots as lm_plots
from nnprobe_services.sequence.lm import queries, supervisor
from nnprobe_services.sequence.lm import validation as requests
from nnprobe_services.sequence.lm.corpus import CorpusStore
from nnprobe_services.sequence.lm.jobs import CANCEL_WAIT_SECONDS, JobManager
from nnprobe_services.sequence.lm.watch import JobChanges, follow, until_stopped
from nnprobe_services.sequence.recurrent import gradients, rnn, truncation
from nnprobe_services.sequence.recurrent import plot as plots
from nnprobe_services.sequence.recurrent.convert import RequestReader
from nnprobe_services.server import validation as valid
from nnprobe_services.server.app import Registration, Runtime
from nnprobe_services.server.metrics import metrics_for

log = logging.getLogger("nnprobe.sequence")


class SequenceServicer(sequence_pb2_grpc.SequenceServiceServicer):
    """Recurrent-network analyses and the LSTM language model (corpora, training jobs, model queries)."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config = runtime.config
        self.device = runtime.device
        self.compute = runtime.compute
        self.read = RequestReader(config, runtime.device)
        self.corpora = CorpusStore(
            config.data_dir, config.cache_dir, config.ptb_dir, config.ptb_download_timeout
        )
        self.jobs = JobManager(
            config.data_dir,
            self.corpora,
            runtime.device,
            max_queued=config.max_queued_jobs,
            runner=supervisor.run_job,
            database_url=config.database_url,
            leases=Leases(
                config.replica_id or default_replica_id(),
                config.job_lease_seconds,
                config.job_poll_seconds,
                config.max_job_takeovers,
            ),
        )
        self.models = queries.ModelCache(self.jobs, runtime.device)
        self.changes = JobChanges(loop)
        #: Set once ``drain`` has handed this replica's jobs over: WatchJob streams end then.
        self.drained = asyncio.Event()
        self.jobs.add_listener(self.changes.notify)
        metrics_for(config.service).replace_collector("training_jobs", JobCollector(self.jobs.store))

    # -- recurrent networks --------------------------------------------------------------------------
    async def RunRecurrent(self, request, context):
        def run(stop: ShouldStop) -> pb.RunRecurrentResponse:
            args = self.read.recurrent(request)
            trajectory = rnn.run(
                args.cell, args.inputs, args.initial, settle_tolerance=args.settle_tolerance, should_stop=stop
            )
            return messages.recurrent(trajectory, args.cell, args.settle_tolerance)

        return await self.compute.run(context, run)

    async def AnalyzeGradients(self, request, context):
        def events(stop: ShouldStop) -> Iterator[pb.AnalyzeGradientsResponse]:
            start = time.perf_counter()
            sweep = self.read.gradients(request)
            for event in gradients.sweep(
                sweep.cells,
                sweep.targets,
                sweep.inputs,
                sweep.initials,
                regime_tolerance=sweep.regime_tolerance,
                forget_bias=sweep.forget_bias,
                should_stop=stop,
            ):
                if isinstance(event, gradients.Progress):
                    yield pb.AnalyzeGradientsResponse(progress=messages.progress(event))
                    continue
                result = pb.GradientAnalysis(
                    runs=[messages.gradient_run(run) for run in event.runs],
                    sequence_length=sweep.sequence_length,
                    hidden_size=sweep.hidden_size,
                    input_size=sweep.input_size,
                    regime_tolerance=sweep.regime_tolerance,
                    plot_png=plots.gradient_flow(event.runs, sweep.sequence_length) if request.plot else b"",
                    seconds=time.perf_counter() - start,
                )
                yield pb.AnalyzeGradientsResponse(result=result)

        async for response in self.compute.stream(context, events):
            yield response

    async def CompareTruncation(self, request, context):
        def events(stop: ShouldStop) -> Iterator[pb.CompareTruncationResponse]:
            sizes = self.read.truncation(request)
            for event in truncation.compare(**sizes, device=self.device, should_stop=stop):
                if isinstance(event, truncation.Progress):
                    yield pb.CompareTruncationResponse(progress=messages.progress(event))
                    continue
                plot = plots.truncation_memory(event) if request.plot else b""
                result = messages.truncation_comparison(event, self.device, plot)
                yield pb.CompareTruncationResponse(result=result)

        async for response in self.compute.stream(context, events):
            yield response

    # -- corpora and training jobs -------------------------------------------------------------------
    async def UploadCorpus(self, request_iterator, context):
        parts: dict[str, list[str]] = {}
        name, size = "", 0
        index = -1
        async for request in request_iterator:
            index += 1
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
            parts.setdefault(messages.SPLIT_NAMES[code], []).append(request.text)
        texts = {split: "".join(chunks) for split, chunks in parts.items()}
        corpus = await self.compute.run(context, lambda _stop: self.corpora.save(name, texts))
        return pb.UploadCorpusResponse(corpus=messages.corpus_info(corpus))

    async def StartTraining(self, request, context):
        key = requests.request_id(request.request_id)
        if not request.corpus_id:
            raise InvalidArgument("is required: 'ptb' or an id from UploadCorpus", field="corpus_id")
        valid.enum_value(request.config.optimizer, pb.Optimizer, "config.optimizer", pb.OPTIMIZER_ADAM)
        given = messages.given_config(request.config)
        digest = messages.request_digest(request)

        def start(_stop: ShouldStop) -> pb.StartTrainingResponse:
            held = self.jobs.started(key, digest)  # a retry: its job, even if the limits changed since
            if held is None:
                corpus = self.corpora.get(request.corpus_id)
                limit = self.config.max_tensor_elements
                config, device = requests.training_config(given, corpus, limit=limit, device=self.device)
                held = self.jobs.start(
                    request.corpus_id, config, request.name, device, request_id=key, request_digest=digest
                )
            return pb.StartTrainingResponse(job=self._job(held))

        return await self.compute.run(context, start)

    async def WatchJob(self, request, context):
        if request.after_sequence < 0:
            raise InvalidArgument(f"must be >= 0, got {request.after_sequence}", field="after_sequence")
        cursor = request.after_sequence
        async for event in follow(self.jobs, self.changes, request.job_id, cursor, until=self.drained.is_set):
            cursor = event.sequence
            yield pb.WatchJobResponse(event=messages.event(event))
        if self.drained.is_set() and await asyncio.to_thread(self._active, request.job_id):
            raise Unavailable(
                f"this replica is shutting down and job {request.job_id} goes on elsewhere; watch again "
                f"with after_sequence={cursor}"
            )

    async def ListJobs(self, request, context):
        states = []
        for index, code in enumerate(request.states):
            valid.enum_value(code, pb.JobState, f"states[{index}]", 0)
            if code != pb.JOB_STATE_UNSPECIFIED:
                states.append(messages.STATE_NAMES[code])
        limit = valid.positive(request.limit, "limit", default=100, maximum=10_000)

        def listing() -> pb.ListJobsResponse:
            return pb.ListJobsResponse(jobs=[self._job(job) for job in self.jobs.store.jobs(states, limit)])

        return await asyncio.to_thread(listing)

    async def GetJob(self, request, context):
        if request.plot:  # rendering is computation
            return await self.compute.run(context, lambda _stop: self._get_job(request))
        return await asyncio.to_thread(self._get_job, request)

    async def CancelJob(self, request, context):
        if await asyncio.to_thread(self.jobs.request_cancel, request.job_id):
            await until_stopped(self.jobs, self.changes, request.job_id, CANCEL_WAIT_SECONDS)
        job = await asyncio.to_thread(self.jobs.get, request.job_id)
        return pb.CancelJobResponse(job=await asyncio.to_thread(self._job, job))

    async def ResumeJob(self, request, context):  # reads the checkpoint: computation
        job = await self.compute.run(context, lambda _stop: self.jobs.resume(request.job_id))
        return pb.ResumeJobResponse(job=await asyncio.to_thread(self._job, job))

    # -- using a trained model -----------------------------------------------------------------------
    async def EvaluatePerplexity(self, request, context):
        code: Any = valid.enum_value(request.split, pb.CorpusSplit, "split", pb.CORPUS_SPLIT_VALID)
        split = messages.SPLIT_NAMES[code]
        result = await self.compute.run(
            context,
            lambda stop: queries.evaluate_job(
                self.models, self.corpora, request.job_id, split, request.batch_size, stop
            ),
        )
        return pb.EvaluatePerplexityResponse(
            perplexity=result.perplexity,
            loss=result.loss,
            tokens=result.tokens,
            step=result.step,
            split=code,
            seconds=result.seconds,
        )

    async def Sample(self, request, context):
        strategy = valid.enum_value(
            request.strategy, pb.SamplingStrategy, "strategy", pb.SAMPLING_STRATEGY_MULTINOMIAL
        )
        options = queries.SampleOptions(
            prompt=request.prompt,
            start_word_id=request.start_word_id if request.HasField("start_word_id") else None,
            num_words=request.num_words,
            greedy=strategy == pb.SAMPLING_STRATEGY_GREEDY,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_k=request.top_k,
            top_p=request.top_p if request.HasField("top_p") else None,
            seed=request.seed,
        )
        limit = self.config.max_sample_words
        result = await self.compute.run(
            context, lambda stop: queries.sample_job(self.models, request.job_id, options, limit, stop)
        )
        return pb.SampleResponse(
            words=result.words,
            word_ids=result.word_ids,
            text=result.text,
            prompt_ids=result.prompt_ids,
            log_probability=result.log_probability,
            step=result.step,
        )

    async def EmbeddingDistance(self, request, context):
        found = await self.compute.run(
            context,
            lambda _stop: queries.word_distance(self.models, request.job_id, request.word_a, request.word_b),
        )
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

    async def NearestWords(self, request, context):
        metric: Any = valid.enum_value(
            request.metric, pb.DistanceMetric, "metric", pb.DISTANCE_METRIC_EUCLIDEAN
        )
        name = "cosine" if metric == pb.DISTANCE_METRIC_COSINE else "euclidean"
        found = await self.compute.run(
            context,
            lambda _stop: queries.nearest_words(self.models, request.job_id, request.word, request.k, name),
        )
        return pb.NearestWordsResponse(
            neighbors=[pb.Neighbor(word=w, word_id=i, distance=d) for w, i, d in found.neighbours],
            word_id=found.word_id,
            metric=metric,
            step=found.step,
        )

    # -- shutdown and helpers ------------------------------------------------------------------------
    async def drain(self, grace: float) -> None:
        """Stop this replica's jobs within ``grace`` seconds: each running one checkpoints at its next step
        boundary and goes back to the shared queue (another replica, or this one after a restart, continues
        it); queued ones stay queued. Then end the WatchJob streams of jobs still queued or running
        (UNAVAILABLE, after every event recorded so far), so that their clients follow on elsewhere."""
        try:
            left = await asyncio.to_thread(self.jobs.shutdown, max(0.0, grace - 0.5))
        finally:
            self.drained.set()
            self.changes.wake_all()
        if left:
            log.warning(
                "jobs %s did not stop within %.1f s; they resume from their last checkpoint", left, grace
            )

    def _active(self, job_id: str) -> bool:
        return self.jobs.get(job_id).state in ACTIVE

    def _job(self, job: JobRecord) -> pb.Job:
        return messages.job(job, self.jobs.queue_position(job))

    def _get_job(self, request: pb.GetJobRequest) -> pb.GetJobResponse:
        job = self.jobs.get(request.job_id)
        response = pb.GetJobResponse(job=self._job(job))
        if request.history or request.plot:
            history = self._history(job.job_id)
            if request.history:
                response.events.extend(messages.event(e) for e in history)
            if request.plot:
                title = f"{job.job_id} on {job.corpus_id} ({job.state}, step {job.step}/{job.total_steps})"
                response.plot_png = lm_plots.training_curves(history, title)
        return response

    def _history(self, job_id: str) -> list[EventRecord]:
        events: list[EventRecord] = []
        while True:
            batch = self.jobs.store.events(job_id, events[-1].sequence if events else 0, limit=10_000)
            events.extend(batch)
            if len(batch) < 10_000:
                return events


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add the servicer to ``server`` (called on the server's event loop); the drain hook stops training."""
    servicer = SequenceServicer(runtime, asyncio.get_running_loop())
    sequence_pb2_grpc.add_SequenceServiceServicer_to_server(servicer, server)
    return Registration([pb.DESCRIPTOR.services_by_name["SequenceService"].full_name], drain=servicer.drain)
