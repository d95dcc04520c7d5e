"""Corpora for the language model (``upload_corpus``) and their splits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result

SPLIT_CODES = {"train": pb.CORPUS_SPLIT_TRAIN, "valid": pb.CORPUS_SPLIT_VALID, "test": pb.CORPUS_SPLIT_TEST}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}

SPLITS = tuple(SPLIT_CODES)


@rich_result()
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


def upload_corpus_messages(
    *, train: str, valid: str, test: str, name: str, chunk_bytes: int
) -> Iterator[pb.UploadCorpusRequest]:
    """The request stream of ``upload_corpus`` (sync and asyncio clients): the name, then each split's
    text in chunks of ``chunk_bytes`` characters."""
    yield pb.UploadCorpusRequest(name=name, split=pb.CORPUS_SPLIT_TRAIN, text="")
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        for start in range(0, len(text), chunk_bytes):
            yield pb.UploadCorpusRequest(split=SPLIT_CODES[split], text=text[start : start + chunk_bytes])


def corpus_info(response: Any) -> CorpusInfo:
    """An ``UploadCorpusResponse`` as a ``CorpusInfo``."""
    r = response.corpus
    return CorpusInfo(
        corpus_id=r.corpus_id,
        name=r.name,
        vocab_size=r.vocab_size,
        tokens={SPLIT_NAMES[s.split]: s.tokens for s in r.splits},
        unknown_tokens={SPLIT_NAMES[s.split]: s.unknown_tokens for s in r.splits},
        location=r.location,
        raw=r,
    )


class CorpusMethods(BaseClient):
    """The corpus method of ``SequenceClient``."""

    _stub: Any

    def upload_corpus(
        self,
        train: str,
        valid: str = "",
        test: str = "",
        *,
        name: str = "",
        chunk_bytes: int = 1 << 20,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> CorpusInfo:
        """Upload a corpus (text of each split: whitespace-separated words, one sentence per line),
        streamed in chunks of about ``chunk_bytes``. The same text gives the same id."""

        messages = upload_corpus_messages(**request_arguments(locals()))
        return corpus_info(self._unary(self._stub.UploadCorpus, messages, timeout))
