"""Memory and time of truncated against full back-propagation through time (``compare_truncation``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.sequence.progress import final_result

_MODES = {pb.TRUNCATION_MODE_TRUNCATED: "truncated", pb.TRUNCATION_MODE_FULL: "full"}


@rich_result()
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


@rich_result(pictures=("plot_png",), tables={"points": "points"})
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


#: What ``compare_truncation`` counts in its ``Progress``.
PROGRESS_UNIT = "chunks"


def compare_truncation_request(
    *,
    chunk_counts: Sequence[int],
    vocab_size: int,
    embed_size: int,
    hidden_size: int,
    batch_size: int,
    chunk_length: int,
    seed: int,
    plot: bool,
) -> pb.CompareTruncationRequest:
    """The request of ``compare_truncation`` (sync and asyncio clients)."""
    return pb.CompareTruncationRequest(
        vocab_size=vocab_size,
        embed_size=embed_size,
        hidden_size=hidden_size,
        batch_size=batch_size,
        chunk_length=chunk_length,
        chunk_counts=list(chunk_counts),
        seed=seed,
        plot=plot,
    )


def truncation_comparison(r: Any) -> TruncationComparison:
    """A ``CompareTruncationResult`` as a ``TruncationComparison``."""
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


class TruncationMethods(BaseClient):
    """The truncation method of ``SequenceClient``."""

    _stub: Any

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
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> TruncationComparison:
        """Memory held for backward and time of K chunks with ``detach()`` between them (truncated) and
        without (full), for every K of ``chunk_counts`` (default [1, 2, 4, 8]).

        The model is embedding -> LSTM -> linear; sizes default to the course's language model (vocab
        10000, embed 128, hidden 1024, batch 20, chunk length 30). ``plot=True`` returns a PNG.
        ``on_progress`` is called with a ``nnprobe.Progress`` (unit ``chunks``, ``message`` like ``K=4
        truncated``) as the runs go. ``timeout``: seconds, ``None`` for no deadline, ``USE_CLIENT_DEFAULT``
        for the client's.

        Raises:
            nnprobe.InvalidArgument: a bad size or chunk count (``field_violations`` names it).
        """
        request = compare_truncation_request(**request_arguments(locals()))
        events = self._stream(self._stub.CompareTruncation, request, timeout)
        with reporting(progress, on_progress, "truncation", PROGRESS_UNIT) as report:
            return truncation_comparison(final_result(events, report, PROGRESS_UNIT))
