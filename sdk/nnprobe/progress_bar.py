"""Progress bars for long calls, in a terminal and in a notebook (tqdm.auto; the extra ``nnprobe[notebook]``).

A ``ProgressBar`` is fed the events of a streamed call: anything with ``done``, ``total`` and ``message``
(``nnprobe.progress.Progress``), or ``update(done, total, message)``. ``wrap(on_progress)`` gives a callback
that moves the bar and then calls the caller's own. A disabled bar (``progress=False``), or one without tqdm
installed, shows nothing and costs nothing. In a notebook the bar is tqdm's widget when ipywidgets is
installed and its text bar otherwise (no JavaScript needed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Seconds between two redraws: a bar in a saved notebook stays a few lines long.
MIN_INTERVAL = 0.5


def _bar_class() -> Any | None:
    """tqdm.auto's bar when ipywidgets is there (it needs it in a notebook), tqdm's text bar otherwise;
    None without tqdm."""
    if importlib.util.find_spec("tqdm") is None:
        return None
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as auto_bar

        return auto_bar
    from tqdm.std import tqdm as text_bar

    return text_bar


class ProgressBar:
    """``with ProgressBar(description="attack", unit="iterations") as bar: ...; bar(progress)``.

    ``enabled=False`` (a call's ``progress=False``) shows nothing. ``total``: units in all (0: unknown,
    a counter); ``initial``: units already done (a job watched again after a restart starts there).
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        description: str = "",
        unit: str = "it",
        total: int = 0,
        initial: int = 0,
    ) -> None:
        bar_class = _bar_class() if enabled else None
        self._bar = None
        if bar_class is not None:
            self._bar = bar_class(
                total=total or None,
                initial=initial,
                desc=description,
                unit=f" {unit}" if unit else "it",
                mininterval=MIN_INTERVAL,
                leave=True,
                dynamic_ncols=True,
            )

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn (enabled, and tqdm installed)."""
        return self._bar is not None

    def update(self, done: int, total: int = 0, message: str = "") -> None:
        """Move the bar to ``done`` of ``total`` (0: keep the total it has), with ``message`` beside it."""
        bar = self._bar
        if bar is None:
            return
        if total > 0 and bar.total != total:
            bar.total = total
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.update(max(0, done - bar.n))

    def __call__(self, progress: Any) -> None:
        """Move the bar by an event with ``done``, ``total`` and ``message`` (a ``Progress``)."""
        self.update(int(progress.done), int(getattr(progress, "total", 0) or 0), str(progress.message or ""))

    def wrap(self, on_progress: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """A callback that moves this bar, then calls ``on_progress`` (when given) with the same event."""

        def both(progress: Any) -> None:
            self(progress)
            if on_progress is not None:
                on_progress(progress)

        return both

    def close(self) -> None:
        """Draw the bar's last state and stop it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def reporting(
    progress: bool, on_progress: Callable[[Any], None] | None, description: str, unit: str
) -> Iterator[Callable[[Any], None]]:
    """The callback a long call reports its ``Progress`` events to: a bar (when ``progress`` and tqdm is
    installed) that then hands each event to ``on_progress``; the bar is closed when the call ends."""
    with ProgressBar(progress, description=description, unit=unit) as bar:
        yield bar.wrap(on_progress)
