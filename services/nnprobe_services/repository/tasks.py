"""The ``config.yaml`` of a recurrent or token model: its task and the shapes it takes and returns.

Examples::

    task: recurrent_cell      # (x_t (B, I), h (B, H)[, c (B, H)]) -> new state(s), each (B, H)
    input_size: 3             # I (leave out with `vocabulary`: x_t is then token ids (B,))
    hidden_size: 5            # H
    states: 2                 # 1 (RNN/GRU-like: h) or 2 (LSTM-like: h and c, returned separately)

    task: sequence_model      # (B, T, I) -> (B, T, H)
    input_size: 3
    hidden_size: 4
    sequence_length: 5        # optional: T for a model exported with a fixed length

    task: token_model         # (B, T, D) -> (B, T, D), or (B, D) with `pooled: true`
    d_model: 8
    pooled: true
    vocabulary: 100           # optional: the model starts with an embedding and takes token ids (B, T)

``batch_size`` (optional, any task) is B for a model exported with a fixed batch; without it the upload probes
with B = 2 (and T = 5). Inputs are given flat in order (``x``, then ``h``, then ``c``): an exported
``nn.LSTMCell``'s ``(x, (h, c))`` flattens to the same. ``default_version`` pins the version served by
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository import schema
from nnprobe_services.repository.names import check_version

CELL, SEQUENCE, TOKEN = "recurrent_cell", "sequence_model", "token_model"
TASKS = (CELL, SEQUENCE, TOKEN)
KEYS = {
    CELL: ("task", "input_size", "hidden_size", "states", "vocabulary", "batch_size", "default_version"),
    SEQUENCE: (
        "task",
        "input_size",
        "hidden_size",
        "vocabulary",
        "batch_size",
        "sequence_length",
        "default_version",
    ),
    TOKEN: ("task", "d_model", "pooled", "vocabulary", "batch_size", "sequence_length", "default_version"),
}
MAX_WIDTH = 1 << 20
MAX_LENGTH = 1 << 16
PROBE_BATCH, PROBE_LENGTH = 2, 5


@dataclass(frozen=True)
class TaskConfig:
    """A validated recurrent or token model config. ``hidden_size`` is H (cells, sequence models) or D
    (``d_model`` of token models); ``input_size`` is I, None when the model takes token ids (``vocabulary``)
    or for token models (their input width is D)."""

    task: str
    hidden_size: int
    input_size: int | None = None
    states: int = 1
    pooled: bool = False
    vocabulary: int | None = None
    batch_size: int | None = None
    sequence_length: int | None = None
    default_version: int | None = None

    @property
    def labels(self) -> None:
        """Recurrent and token models have no labels file."""
        return None

    @property
    def batch(self) -> int:
        """B to probe and analyse with: the declared one, else 2."""
        return self.batch_size or PROBE_BATCH

    @property
    def length(self) -> int:
        """T to probe with: the declared one, else 5 (cells take one step at a time)."""
        return self.sequence_length or PROBE_LENGTH

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Widths of a cell's states (H, or H and H); empty for other tasks."""
        return (self.hidden_size,) * self.states if self.task == CELL else ()

    def to_dict(self) -> dict[str, Any]:
        """The YAML document (round-trips through ``parse``)."""
        width = "d_model" if self.task == TOKEN else "hidden_size"
        document: dict[str, Any] = {"task": self.task}
        if self.input_size is not None:
            document["input_size"] = self.input_size
        document[width] = self.hidden_size
        optional = {
            "states": self.states if self.task == CELL else None,
            "pooled": True if self.pooled else None,
            "vocabulary": self.vocabulary,
            "batch_size": self.batch_size,
            "sequence_length": self.sequence_length,
            "default_version": self.default_version,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        return document

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _optional(root: dict[str, Any], key: str, field: str, high: int) -> int | None:
    return None if root.get(key) is None else schema.integer(root[key], f"{field}.{key}", 1, high)


def parse(document: Any, tasks: tuple[str, ...] = TASKS, field: str = "config") -> TaskConfig:
    """Validate a parsed YAML document of one of ``tasks``; every problem is ``InvalidArgument`` naming
    ``field.key``."""
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"must be a YAML mapping (key: value lines) with a task of {', '.join(tasks)}", field=field
        )
    if "task" not in document:
        raise InvalidArgument(f"is required: one of {', '.join(tasks)}", field=f"{field}.task")
    task = schema.choice(document["task"], tasks, f"{field}.task")
    schema.unknown_keys(document, KEYS[task], field)
    width = "d_model" if task == TOKEN else "hidden_size"
    if width not in document:
        raise InvalidArgument(f"is required for a {task}", field=f"{field}.{width}")
    vocabulary = _optional(document, "vocabulary", field, 1 << 24)
    input_size = _optional(document, "input_size", field, MAX_WIDTH)
    if task != TOKEN and input_size is None and vocabulary is None:
        raise InvalidArgument(
            f"is required for a {task} (or `vocabulary` for a model that takes token ids)",
            field=f"{field}.input_size",
        )
    if input_size is not None and vocabulary is not None:
        raise InvalidArgument(
            "goes with float inputs; a model with a `vocabulary` takes token ids", field=f"{field}.input_size"
        )
    default = document.get("default_version")
    return TaskConfig(
        task=task,
        hidden_size=schema.integer(document[width], f"{field}.{width}", 1, MAX_WIDTH),
        input_size=input_size,
        states=schema.integer(document.get("states", 1), f"{field}.states", 1, 2),
        pooled=schema.boolean(document.get("pooled", False), f"{field}.pooled"),
        vocabulary=vocabulary,
        batch_size=_optional(document, "batch_size", field, 4096),
        sequence_length=_optional(document, "sequence_length", field, MAX_LENGTH),
        default_version=None if default is None else check_version(default, f"{field}.default_version"),
    )


def parse_yaml(text: str | bytes, field: str = "config", tasks: tuple[str, ...] = TASKS) -> TaskConfig:
    """``parse`` of YAML text or UTF-8 bytes (bounded, plain data: ``schema.load_document``)."""
    return parse(schema.load_document(text, field), tasks, field)
