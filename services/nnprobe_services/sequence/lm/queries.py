"""Using a trained model: a job's last or best-validation checkpointed model (cached), perplexity on a split,
sampling, embedding distances and nearest words. Plain values in and out; no gRPC.

Every query takes ``checkpoint``: ``"last"`` (the default: the last checkpoint written, the final model of
a finished job) or ``"best"`` (the checkpoint of the lowest validation perplexity seen at an evaluation).

Errors: ``NotFound`` (job, word), ``FailedPrecondition`` (no checkpoint yet, no best checkpoint before the
first evaluation, a split the corpus lacks),
``InvalidArgument`` naming the request field, ``Cancelled`` when ``should_stop`` turns true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nnprobe_services import validation as valid
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, never
from nnprobe_services.sequence.lm import checkpoints, embeddings, sampling
from nnprobe_services.sequence.lm.corpus import EOS, CorpusStore
from nnprobe_services.sequence.lm.evaluation import check_streams, evaluate, perplexity
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import load_model
from nnprobe_services.sequence.lm.training_jobs import JobManager


@dataclass
class LoadedModel:
    """A model read from a job's checkpoint: the model (eval mode), its vocabulary and word index, the
    step it was saved at, its training configuration and the corpus it was trained on."""

    model: Any
    vocab: list[str]
    index: dict[str, int]
    step: int
    config: TrainingConfig
    corpus_id: str


#: The checkpoints a query can read.
CHECKPOINTS = ("last", "best")


class ModelCache:
    """Each job's last and best checkpointed models, loaded once per checkpoint file (keyed by mtime and
    size)."""

    def __init__(self, jobs: JobManager, device: torch.device) -> None:
        self.jobs = jobs
        self.device = device
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], tuple[tuple[int, int], LoadedModel]] = {}

    def get(self, job_id: str, checkpoint: str = "last") -> LoadedModel:
        """The model of the job's ``checkpoint`` ("last" or "best"); NotFound for an unknown job,
        FailedPrecondition when it has no checkpoint yet, or (best) no evaluation yet."""
        job = self.jobs.get(job_id)
        path = self.jobs.checkpoint_path(job_id)
        if checkpoint == "best":
            path = checkpoints.best_path(path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FailedPrecondition(
                _missing(job_id, checkpoint, job.steps_per_epoch),
                field="checkpoint" if checkpoint == "best" else "job_id",
            ) from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._models.get((job_id, checkpoint))
        if cached is not None and cached[0] == key:
            return cached[1]
        payload = checkpoints.load(path)
        vocab = payload["vocab"]
        loaded = LoadedModel(
            model=load_model(payload, self.device),
            vocab=vocab,
            index={w: i for i, w in enumerate(vocab)},
            step=payload["step"],
            config=TrainingConfig.from_dict(payload["config"]),
            corpus_id=payload["corpus_id"],
        )
        with self._lock:
            self._models[(job_id, checkpoint)] = (key, loaded)
        return loaded


def _missing(job_id: str, checkpoint: str, steps_per_epoch: int) -> str:
    if checkpoint == "best":
        return (
            f"job {job_id} has no best checkpoint yet: no validation evaluation has happened (the first "
            f"comes at the end of epoch 1, step {steps_per_epoch}, and needs a corpus with a valid split); "
            "ask for checkpoint=last or wait"
        )
    return f"job {job_id} has no checkpoint yet; wait for its first checkpoint or for it to finish"


@dataclass
class Evaluation:
    """Perplexity exp(loss) of the model at ``step`` on a split: ``loss`` in nats per predicted token,
    ``tokens`` predicted, wall ``seconds``."""

    perplexity: float
    loss: float
    tokens: int
    step: int
    seconds: float


def evaluate_job(
    models: ModelCache,
    corpora: CorpusStore,
    job_id: str,
    split: str,
    batch_size: int,
    should_stop: Callable[[], bool] = never,
    checkpoint: str = "last",
) -> Evaluation:
    """Perplexity of the job's model over every predicted token of ``split`` ("train", "valid" or
    "test") read as ``batch_size`` contiguous streams (0: the job's ``eval_batch_size``; see
    ``evaluation``) at ``checkpoint``."""
    loaded = models.get(job_id, checkpoint)
    ids = corpora.get(loaded.corpus_id).split(split)
    batch = valid.positive(batch_size, "batch_size", default=loaded.config.eval_batch_size)
    check_streams(ids.tokens, batch, "batch_size", f"the {split} split")
    started = time.perf_counter()
    loss, tokens = evaluate(
        loaded.model, ids.ids, batch, loaded.config.sequence_length, models.device, should_stop
    )
    return Evaluation(perplexity(loss), loss, tokens, loaded.step, time.perf_counter() - started)


@dataclass
class SampleOptions:
    """What to generate: ``prompt`` (words) or ``start_word_id`` (None: neither, start after ``<eos>``),
    ``num_words`` (0: 50), greedy or multinomial with ``temperature`` (None: 1; 0: greedy), ``top_k``
    (0: all), ``top_p`` (None: 1) and ``seed`` (see ``sampling.sampling_options``)."""

    prompt: str = ""
    start_word_id: int | None = None
    num_words: int = 0
    greedy: bool = False
    temperature: float | None = None
    top_k: int = 0
    top_p: float | None = None
    seed: int = 0


@dataclass
class Sample:
    """Generated ``words`` (``word_ids``), as ``text`` (``<eos>`` as a line break), after ``prompt_ids``;
    ``log_probability`` (nats) of the words under the model; the checkpoint ``step``."""

    words: list[str]
    word_ids: list[int]
    text: str
    prompt_ids: list[int]
    log_probability: float
    step: int


def sample_job(
    models: ModelCache,
    job_id: str,
    options: SampleOptions,
    max_words: int,
    should_stop: Callable[[], bool] = never,
    checkpoint: str = "last",
) -> Sample:
    """Generate words from the job's model (at most ``max_words``); InvalidArgument names the option at
    fault, NotFound a prompt word outside the vocabulary, Cancelled when ``should_stop`` turns true
    (checked between generated words). ``checkpoint``: "last" or "best"."""
    loaded = models.get(job_id, checkpoint)
    num_words = valid.positive(options.num_words, "num_words", default=50, maximum=max_words)
    decoding = sampling.sampling_options(
        greedy=options.greedy, temperature=options.temperature, top_k=options.top_k, top_p=options.top_p
    )
    prompt = _prompt_ids(loaded, options.prompt, options.start_word_id)
    result = sampling.sample(
        loaded.model,
        prompt,
        num_words,
        decoding,
        seed=options.seed,
        device=models.device,
        should_stop=should_stop,
    )
    words = [loaded.vocab[i] for i in result.word_ids]
    text = "".join("\n" if w == EOS else w + " " for w in words)
    return Sample(words, result.word_ids, text, prompt, result.log_probability, loaded.step)


def _prompt_ids(loaded: LoadedModel, prompt: str, start_word_id: int | None) -> list[int]:
    if prompt.strip():
        if start_word_id is not None:
            raise InvalidArgument("give either a prompt or a start_word_id, not both", field="start_word_id")
        return [embeddings.word_id(loaded.index, w, "prompt") for w in prompt.split()]
    if start_word_id is not None:
        if not 0 <= start_word_id < len(loaded.vocab):
            raise InvalidArgument(
                f"must be in [0, {len(loaded.vocab)}), got {start_word_id}", field="start_word_id"
            )
        return [start_word_id]
    return [loaded.index[EOS]]


@dataclass
class WordDistance:
    """Distance between the input embeddings of two words (ids ``id_a``, ``id_b``) at checkpoint ``step``."""

    distance: embeddings.Distance
    id_a: int
    id_b: int
    step: int


def word_distance(
    models: ModelCache, job_id: str, word_a: str, word_b: str, checkpoint: str = "last"
) -> WordDistance:
    """Euclidean distance and cosine similarity of two words' embeddings at ``checkpoint`` ("last" or
    "best"); NotFound names the word."""
    loaded = models.get(job_id, checkpoint)
    a = embeddings.word_id(loaded.index, word_a, "word_a")
    b = embeddings.word_id(loaded.index, word_b, "word_b")
    return WordDistance(embeddings.distance(loaded.model.embed.weight.detach(), a, b), a, b, loaded.step)


@dataclass
class Neighbours:
    """The nearest words to ``word_id``: (word, id, distance) nearest first, at checkpoint ``step``."""

    neighbours: list[tuple[str, int, float]]
    word_id: int
    step: int


def nearest_words(
    models: ModelCache, job_id: str, word: str, k: int, metric: str, checkpoint: str = "last"
) -> Neighbours:
    """The ``k`` words (0: 10) nearest to ``word`` by ``metric`` ("euclidean" or "cosine") at
    ``checkpoint`` ("last" or "best")."""
    loaded = models.get(job_id, checkpoint)
    k = valid.positive(k, "k", default=10, maximum=len(loaded.vocab) - 1)
    query = embeddings.word_id(loaded.index, word, "word")
    found = embeddings.nearest(loaded.model.embed.weight.detach(), query, k, metric)
    return Neighbours([(loaded.vocab[i], i, d) for i, d in found], query, loaded.step)


__all__ = [
    "CHECKPOINTS",
    "Evaluation",
    "LoadedModel",
    "ModelCache",
    "Neighbours",
    "Sample",
    "SampleOptions",
    "WordDistance",
    "evaluate_job",
    "nearest_words",
    "sample_job",
    "word_distance",
]
