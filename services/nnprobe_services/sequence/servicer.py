"""SequenceService on the event loop: each handler converts the request to plain values (``convert`` of
``recurrent`` or ``lm``), runs one plain call (``workflow`` of either, or the language model's ``queries``)
and converts the result back.

Computation (tensor decoding, PyTorch, plots, corpus tokenising, checkpoint loading) runs in the compute
pool, which sets the call's stop signal when the client cancels or the deadline passes; replies made of
tensors are built there too. Job bookkeeping (ListJobs, GetJob, CancelJob, WatchJob, GetTrainingLogs)
reads the job store (and TensorBoard files) with ``asyncio.to_thread`` and waits for changes with asyncio
notifications, so it answers while the pool is busy and an idle WatchJob stream holds no thread. On
shutdown the drain hook stops the running jobs at a step boundary, checkpoints them and hands them back to
the shared queue; WatchJob streams on this replica deliver that hand-over event and then end with
UNAVAILABLE, so their clients watch on from the same sequence through another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import grpc
from nnprobe.api.sequence.v1 import models_pb2, sequence_pb2_grpc
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services.errors import ShouldStop
from nnprobe_services.repository import convert as model_convert
from nnprobe_services.repository.task_models import TaskModels
from nnprobe_services.sequence.jobs.metrics import JobCollector
from nnprobe_services.sequence.jobs.watch import JobChanges
from nnprobe_services.sequence.lm import convert as lm_convert
from nnprobe_services.sequence.lm import queries
from nnprobe_services.sequence.lm import workflow as lm_workflow
from nnprobe_services.sequence.lm.corpus import CorpusStore
from nnprobe_services.sequence.recurrent import (
    convert,
    own_model_convert,
    own_model_repository,
    own_model_workflow,
    workflow,
)
from nnprobe_services.server.app import Registration, Runtime
from nnprobe_services.server.metrics import metrics_for

log = logging.getLogger("nnprobe.sequence")


class SequenceServicer(sequence_pb2_grpc.SequenceServiceServicer):
    """Recurrent-network analyses and the LSTM language model (corpora, training jobs, model queries)."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config = runtime.config
        self.device = runtime.device
        self.compute = runtime.compute
        self.read = convert.RequestReader(config, runtime.device)
        self.corpora = CorpusStore(
            config.common.data_dir,
            config.common.cache_dir,
            config.sequence.ptb_dir,
            config.sequence.ptb_download_timeout,
        )
        self.jobs = lm_workflow.open_jobs(config, self.corpora, runtime.device)
        self.models = queries.ModelCache(self.jobs, runtime.device)
        #: The user's recurrent models (recurrent_cell, sequence_model): UploadModel/ListModels/DeleteModel.
        self.repository = TaskModels(
            config.sequence_model_repository_dir,
            accepted=("recurrent_cell", "sequence_model"),
            max_model_bytes=config.vision.max_model_bytes,
            max_model_nodes=config.vision.max_model_nodes,
        )
        #: AnalyzeGradients' resolver of those models (loaded in the requested dtype on the device).
        self.resolve_model = own_model_repository.resolver(self.repository, runtime.device)
        self.changes = JobChanges(loop)
        #: Set once ``drain`` has handed this replica's jobs over: WatchJob streams end then.
        self.drained = asyncio.Event()
        self.jobs.add_listener(self.changes.notify)
        metrics_for(config.service).replace_collector("training_jobs", JobCollector(self.jobs.store))

    # -- recurrent networks --------------------------------------------------------------------------
    async def RunRecurrent(self, request, context):
        def run(stop: ShouldStop) -> pb.RunRecurrentResponse:
            args = self.read.recurrent(request)
            return convert.recurrent_reply(workflow.run_recurrent(args, stop), args)

        return await self.compute.run(context, run)

    async def AnalyzeGradients(self, request, context):
        def events(stop: ShouldStop) -> Iterator[pb.AnalyzeGradientsResponse]:
            start = time.perf_counter()
            if request.model:  # the user's own model from the repository
                limit = self.config.common.max_tensor_elements
                run = own_model_convert.read_model_gradients(request, self.resolve_model, self.device, limit)
                for own in own_model_workflow.analyze_model_gradients(run, start, stop):
                    yield own_model_convert.model_gradients_reply(own)
                return
            sweep = self.read.gradients(request)
            for event in workflow.analyze_gradients(sweep, request.plot, start, stop):
                yield convert.gradients_reply(event, sweep)

        async for response in self.compute.stream(context, events):
            yield response

    async def CompareTruncation(self, request, context):
        def events(stop: ShouldStop) -> Iterator[pb.CompareTruncationResponse]:
            sizes = self.read.truncation(request)
            for event in workflow.compare_truncation(sizes, self.device, request.plot, stop):
                yield convert.truncation_reply(event, self.device)

        async for response in self.compute.stream(context, events):
            yield response

    # -- corpora and training jobs -------------------------------------------------------------------
    async def UploadCorpus(self, request_iterator, context):
        name, texts = await lm_convert.corpus_upload(request_iterator, self.config.sequence.max_corpus_bytes)
        corpus = await self.compute.run(context, lambda _stop: self.corpora.save(name, texts))
        return lm_convert.upload_reply(corpus)

    async def StartTraining(self, request, context):
        training = lm_convert.training_request(request)
        limit = self.config.common.max_tensor_elements
        job = await self.compute.run(
            context,
            lambda _stop: lm_workflow.start_training(self.jobs, self.corpora, training, limit, self.device),
        )
        return lm_convert.start_reply(job)

    async def WatchJob(self, request, context):
        cursor = lm_convert.watch_cursor(request)
        async for event in lm_workflow.watch(self.jobs, self.changes, request.job_id, cursor, self.drained):
            yield lm_convert.watch_reply(event)

    async def ListJobs(self, request, context):
        states, limit = lm_convert.job_filter(request)
        return await asyncio.to_thread(
            lambda: lm_convert.list_reply(lm_workflow.list_jobs(self.jobs, states, limit))
        )

    async def GetJob(self, request, context):
        def read(_stop: ShouldStop | None = None) -> pb.GetJobResponse:
            detail = lm_workflow.get_job(self.jobs, request.job_id, request.history, request.plot)
            return lm_convert.get_reply(detail)

        if request.plot:  # rendering is computation
            return await self.compute.run(context, read)
        return await asyncio.to_thread(read)

    async def CancelJob(self, request, context):
        return lm_convert.cancel_reply(await lm_workflow.cancel(self.jobs, self.changes, request.job_id))

    async def ResumeJob(self, request, context):  # reads the checkpoint: computation
        job = await self.compute.run(context, lambda _stop: lm_workflow.resume(self.jobs, request.job_id))
        return lm_convert.resume_reply(job)

    async def GetTrainingLogs(self, request, context):  # reads files: a thread, not the compute pool
        limit = self.config.common.max_message_bytes
        files = await asyncio.to_thread(lm_workflow.training_log_files, self.jobs, request.job_id, limit)
        return lm_convert.training_logs_reply(files)

    # -- using a trained model -----------------------------------------------------------------------
    async def EvaluatePerplexity(self, request, context):
        code, split = lm_convert.evaluation_split(request)
        checkpoint = lm_convert.checkpoint_choice(request)
        result = await self.compute.run(
            context,
            lambda stop: queries.evaluate_job(
                self.models, self.corpora, request.job_id, split, request.batch_size, stop, checkpoint
            ),
        )
        return lm_convert.evaluation_reply(result, code)

    async def Sample(self, request, context):
        options = lm_convert.sample_options(request)
        limit = self.config.sequence.max_sample_words
        checkpoint = lm_convert.checkpoint_choice(request)
        result = await self.compute.run(
            context,
            lambda stop: queries.sample_job(self.models, request.job_id, options, limit, stop, checkpoint),
        )
        return lm_convert.sample_reply(result)

    async def EmbeddingDistance(self, request, context):
        checkpoint = lm_convert.checkpoint_choice(request)
        found = await self.compute.run(
            context,
            lambda _stop: queries.word_distance(
                self.models, request.job_id, request.word_a, request.word_b, checkpoint
            ),
        )
        return lm_convert.distance_reply(found)

    async def NearestWords(self, request, context):
        metric, name = lm_convert.nearest_metric(request)
        checkpoint = lm_convert.checkpoint_choice(request)
        found = await self.compute.run(
            context,
            lambda _stop: queries.nearest_words(
                self.models, request.job_id, request.word, request.k, name, checkpoint
            ),
        )
        return lm_convert.nearest_reply(found, metric)

    # -- the model repository ------------------------------------------------------------------------
    async def UploadModel(self, request_iterator, context) -> models_pb2.UploadModelResponse:
        started = time.monotonic()
        upload = await model_convert.receive_upload(request_iterator, self.repository)
        installed = await self.compute.run(context, lambda _stop: self.repository.install(upload))
        return model_convert.upload_response(models_pb2, installed, started)

    async def ListModels(self, request, context) -> models_pb2.ListModelsResponse:
        return await asyncio.to_thread(model_convert.list_models, models_pb2, self.repository)

    async def DeleteModel(self, request, context) -> models_pb2.DeleteModelResponse:
        name, version = model_convert.deletion(request)
        removed = await asyncio.to_thread(self.repository.delete, name, version)
        return models_pb2.DeleteModelResponse(removed_versions=removed)

    # -- shutdown ------------------------------------------------------------------------------------
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


def register(server: grpc.aio.Server, runtime: Runtime) -> Registration:
    """Add the servicer to ``server`` (called on the server's event loop); the drain hook stops training."""
    servicer = SequenceServicer(runtime, asyncio.get_running_loop())
    sequence_pb2_grpc.add_SequenceServiceServicer_to_server(servicer, server)
    return Registration([pb.DESCRIPTOR.services_by_name["SequenceService"].full_name], drain=servicer.drain)
