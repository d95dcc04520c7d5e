"""``Progress``: what every streamed call of every client reports to its ``on_progress`` callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnprobe.display import rich_result


@rich_result()
@dataclass(frozen=True)
class Progress:
    """How far a streamed call has come: ``done`` of ``total`` ``unit`` s.

    The same type for every call that takes ``on_progress`` (``VisionClient.attack`` and
    ``upload_model``, ``SequenceClient.analyze_gradients``, ``compare_truncation``
    and ``wait_job``, and their ``nnprobe.aio`` twins); ``detail`` carries the call's own record where it
    has one.
    """

    #: Units finished so far (``attack``: the iteration just finished, 1-based, of image ``detail.image``).
    done: int
    #: Units in all; 0 when the client cannot know it (an attack run with the server's default steps).
    total: int
    #: What is counted: ``iterations`` (attack), ``bytes`` (uploads), ``jacobian steps``
    #: (analyze_gradients), ``chunks`` (compare_truncation), ``steps`` (training jobs).
    unit: str
    #: What is being computed now, in words (``LSTM rho=1.2``, ``K=4 truncated``, ``image 0``).
    message: str = ""
    #: The call's own record of this event: an ``nnprobe.AttackProgress`` (loss, goal probability and top-1
    #: of the image after the iteration) for ``attack``; the ``nnprobe.JobEvent`` for ``wait_job``; else None.
    detail: Any = None

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None when ``total`` is unknown."""
        return min(self.done / self.total, 1.0) if self.total > 0 else None


#: The one callback type of every streamed call: ``on_progress(progress)``.
ProgressCallback = Callable[[Progress], None]
