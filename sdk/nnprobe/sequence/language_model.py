"""A trained language model: perplexity, sampling and word embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault, choice
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.sequence.corpus import SPLIT_CODES, SPLIT_NAMES

_STRATEGIES = {"multinomial": pb.SAMPLING_STRATEGY_MULTINOMIAL, "greedy": pb.SAMPLING_STRATEGY_GREEDY}
_METRICS = {"euclidean": pb.DISTANCE_METRIC_EUCLIDEAN, "cosine": pb.DISTANCE_METRIC_COSINE}
_METRIC_NAMES = {code: name for name, code in _METRICS.items()}
_CHECKPOINTS = {"last": pb.CHECKPOINT_CHOICE_LAST, "best": pb.CHECKPOINT_CHOICE_BEST}


STRATEGIES = tuple(_STRATEGIES)
METRICS = tuple(_METRICS)
#: The checkpoints a model query can read: the last one written (the default) or the best-validation one.
CHECKPOINTS = tuple(_CHECKPOINTS)


@rich_result()
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


@rich_result()
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


@rich_result()
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


def _neighbor_rows(result: NearestWords) -> list[dict[str, Any]]:
    """One row per neighbour, nearest first: rank, word, id, distance."""
    return [
        {"rank": rank, "word": word, "id": word_id, "distance": distance}
        for rank, (word, word_id, distance) in enumerate(result.neighbors, start=1)
    ]


@rich_result(tables={"neighbors": _neighbor_rows})
@dataclass
class NearestWords:
    """The k nearest words to ``word``: ``neighbors`` is a list of (word, id, distance), nearest first."""

    word: str
    word_id: int
    metric: str
    neighbors: list[tuple[str, int, float]]
    step: int
    raw: Any = field(repr=False, default=None)


class LanguageModelMethods(BaseClient):
    """The trained-model methods of ``SequenceClient``."""

    _stub: Any

    def evaluate_perplexity(
        self,
        job_id: str,
        *,
        split: str = "valid",
        batch_size: int = 0,
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Perplexity:
        """Perplexity of the job's model on ``split`` of its corpus. ``checkpoint``: ``"last"`` (the final
        model, or the last checkpoint of a job still training) or ``"best"`` (the lowest validation
        perplexity at an evaluation; FAILED_PRECONDITION before the first evaluation)."""
        request = evaluate_perplexity_request(**request_arguments(locals()))
        return perplexity_result(self._unary(self._stub.EvaluatePerplexity, request, timeout), request)

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
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> SampleResult:
        """Generate ``num_words`` words after ``prompt`` (or from ``start_word_id``; the notebook used
        100), ``multinomial`` or ``greedy``. The same request gives the same words.

        ``temperature`` >= 0 (``None``: the server's 1; 0 is greedy decoding), ``top_k`` >= 0 (0: all
        words), ``top_p`` in (0, 1] (``None``: 1). Values are sent as given; the server checks them and
        answers INVALID_ARGUMENT naming the field. ``checkpoint``: ``"last"`` or ``"best"`` (as in
        ``evaluate_perplexity``).
        """
        request = sample_request(**request_arguments(locals()))
        return sample_result(self._unary(self._stub.Sample, request, timeout))

    def embedding_distance(
        self,
        job_id: str,
        word_a: str,
        word_b: str,
        *,
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> EmbeddingDistance:
        """Euclidean and cosine distance between two words' input embeddings at ``checkpoint``
        (``"last"`` or ``"best"``)."""
        request = embedding_distance_request(**request_arguments(locals()))
        return distance_result(self._unary(self._stub.EmbeddingDistance, request, timeout), request)

    def nearest_words(
        self,
        job_id: str,
        word: str,
        *,
        k: int = 10,
        metric: str = "euclidean",
        checkpoint: str = "last",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> NearestWords:
        """The ``k`` words whose embeddings are nearest to ``word``'s (``euclidean`` or ``cosine``) at
        ``checkpoint`` (``"last"`` or ``"best"``)."""
        request = nearest_words_request(**request_arguments(locals()))
        return nearest_result(self._unary(self._stub.NearestWords, request, timeout), request)


# -- requests and results, shared by the sync and asyncio clients ----------------------------------------
def evaluate_perplexity_request(
    *, job_id: str, split: str, batch_size: int, checkpoint: str
) -> pb.EvaluatePerplexityRequest:
    """The request of ``evaluate_perplexity``."""
    return pb.EvaluatePerplexityRequest(
        job_id=job_id,
        split=choice(SPLIT_CODES, split, "split"),
        batch_size=batch_size,
        checkpoint=choice(_CHECKPOINTS, checkpoint, "checkpoint"),
    )


def perplexity_result(r: Any, request: pb.EvaluatePerplexityRequest) -> Perplexity:
    """An ``EvaluatePerplexityResponse`` as a ``Perplexity``."""
    split = SPLIT_NAMES.get(r.split) or SPLIT_NAMES.get(request.split, "")
    return Perplexity(r.perplexity, r.loss, r.tokens, r.step, split, r.seconds, r)


def sample_request(
    *,
    job_id: str,
    prompt: str,
    start_word_id: int | None,
    num_words: int,
    strategy: str,
    temperature: float | None,
    top_k: int,
    top_p: float | None,
    seed: int,
    checkpoint: str,
) -> pb.SampleRequest:
    """The request of ``sample``: the optional fields are set only when given."""
    request = pb.SampleRequest(
        job_id=job_id,
        checkpoint=choice(_CHECKPOINTS, checkpoint, "checkpoint"),
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
    return request


def sample_result(r: Any) -> SampleResult:
    """A ``SampleResponse`` as a ``SampleResult``."""
    return SampleResult(
        list(r.words), list(r.word_ids), r.text, list(r.prompt_ids), r.log_probability, r.step, r
    )


def embedding_distance_request(
    *, job_id: str, word_a: str, word_b: str, checkpoint: str
) -> pb.EmbeddingDistanceRequest:
    """The request of ``embedding_distance``."""
    return pb.EmbeddingDistanceRequest(
        job_id=job_id,
        word_a=word_a,
        word_b=word_b,
        checkpoint=choice(_CHECKPOINTS, checkpoint, "checkpoint"),
    )


def distance_result(r: Any, request: pb.EmbeddingDistanceRequest) -> EmbeddingDistance:
    """An ``EmbeddingDistanceResponse`` as an ``EmbeddingDistance`` of the request's two words."""
    return EmbeddingDistance(
        request.word_a,
        request.word_b,
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


def nearest_words_request(
    *, job_id: str, word: str, k: int, metric: str, checkpoint: str
) -> pb.NearestWordsRequest:
    """The request of ``nearest_words``."""
    return pb.NearestWordsRequest(
        job_id=job_id,
        word=word,
        k=k,
        metric=choice(_METRICS, metric, "metric"),
        checkpoint=choice(_CHECKPOINTS, checkpoint, "checkpoint"),
    )


def nearest_result(r: Any, request: pb.NearestWordsRequest) -> NearestWords:
    """A ``NearestWordsResponse`` as the ``NearestWords`` of the request's word."""
    return NearestWords(
        request.word,
        r.word_id,
        _METRIC_NAMES.get(r.metric) or _METRIC_NAMES.get(request.metric, ""),
        [(n.word, n.word_id, n.distance) for n in r.neighbors],
        r.step,
        r,
    )
