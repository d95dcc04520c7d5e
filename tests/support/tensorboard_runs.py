"""Reading a TensorBoard run as TensorBoard's server reads it (``plugin_event_accumulator``: every summary a
tensor, a SessionLog START after the first purging the steps from its own on; the legacy
``EventAccumulator`` does not purge tensor summaries such as text)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing import plugin_event_accumulator

#: The tag TensorBoard's text plugin gives ``SummaryWriter.add_text("samples/text", ...)``.
SAMPLE_TAG = "samples/text/text_summary"


def server_view(folder: Path | str) -> plugin_event_accumulator.EventAccumulator:
    """The run in ``folder``, loaded with nothing sampled away."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def texts(folder: Path | str) -> list[tuple[int, str]]:
    """(step, text) of the run's evaluation text samples, in step order ([] without any)."""
    accumulator = server_view(folder)
    if SAMPLE_TAG not in accumulator.PluginTagToContent("text"):
        return []
    return [(t.step, t.tensor_proto.string_val[0].decode()) for t in accumulator.Tensors(SAMPLE_TAG)]


def scalars(folder: Path | str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag, as the server shows it."""
    return [(t.step, float(t.tensor_proto.float_val[0])) for t in server_view(folder).Tensors(tag)]
