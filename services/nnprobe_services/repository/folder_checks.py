"""Checks of a repository model folder's contents: its text files read as UTF-8 with the file named when
they cannot be, and whether an upload's config and labels are the model's."""

from __future__ import annotations

from pathlib import Path

from nnprobe_services.errors import AlreadyExists, FailedPrecondition
from nnprobe_services.repository.entries import ModelEntry, RepositoryConfig


def text(root: Path, name: str, relative: str, field: str) -> str:
    """``<root>/<name>/<relative>`` as UTF-8 text; ``FailedPrecondition`` naming the file otherwise."""
    try:
        return (root / name / relative).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise FailedPrecondition(
            f"the repository's {name}/{relative} is not UTF-8 text (byte {error.start}); save it as UTF-8",
            field=field,
        ) from None
    except OSError as error:
        raise FailedPrecondition(
            f"the repository's {name}/{relative} cannot be read: {error.strerror or error}", field=field
        ) from None


def same_contents(existing: ModelEntry | None, config: RepositoryConfig, labels: tuple[str, ...]) -> None:
    """``AlreadyExists`` when model ``existing`` has another config or other labels than an upload's."""
    if existing is None:
        return
    if existing.config != config or existing.labels != labels:
        which = "config" if existing.config != config else "labels"
        raise AlreadyExists(
            f"model {existing.name!r} exists with other {which}; upload without config and labels to add a "
            "version, or delete the model first",
            field="metadata.config_yaml" if which == "config" else "metadata.labels",
        )
