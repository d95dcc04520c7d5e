"""What the model repository holds, as plain values: a model's configuration (any task's config that
``RepositoryConfig`` describes), its versions' files and the version served by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.repository.artifacts import FILE_NAMES, FORMATS


class RepositoryConfig(Protocol):
    """What the repository reads of a model's ``config.yaml`` (a frozen dataclass per task family):
    the labels file it names (None: none), the version it pins as default (None: the highest) and its
    YAML text. Two configs are the same model's when they compare equal."""

    @property
    def labels(self) -> str | None: ...

    @property
    def default_version(self) -> int | None: ...

    def to_yaml(self) -> str: ...


C = TypeVar("C", bound=RepositoryConfig)


@dataclass(frozen=True)
class VersionEntry:
    """One version's file: ``format`` is ``onnx`` or ``pt2``; ``path`` is ``<name>/<version>/model.*``."""

    name: str
    version: int
    format: str
    path: Path


@dataclass(frozen=True)
class ModelEntry(Generic[C]):
    """A model folder: its config, labels (empty when it names none) and versions, oldest first."""

    name: str
    config: C
    labels: tuple[str, ...]
    versions: tuple[VersionEntry, ...]

    @property
    def default_version(self) -> VersionEntry:
        """The version the config pins (``FailedPrecondition`` when it is gone), else the highest."""
        wanted = self.config.default_version
        for entry in self.versions:
            if entry.version == wanted:
                return entry
        if wanted is not None:
            raise FailedPrecondition(
                f"model {self.name!r} names default_version {wanted}, which is not in the repository",
                field="model",
            )
        return self.versions[-1]


def version_file(folder: Path) -> tuple[str, Path] | None:
    """(format, path) of the model file in a version folder, or None when it holds none."""
    for fmt in FORMATS:
        path = folder / FILE_NAMES[fmt]
        if path.is_file():
            return fmt, path
    return None
