"""The model repository: a folder in Triton's layout, shared by every replica that mounts it.

::

    <root>/<name>/config.yaml            the model's configuration (``config``)
    <root>/<name>/labels.txt             class names, one per line (the file ``config.yaml`` names)
    <root>/<name>/<version>/model.onnx   an ONNX model (external data files beside it), or
    <root>/<name>/<version>/model.pt2    a torch.export archive

Changes are atomic on one filesystem: an upload is written and validated in ``<root>/.staging/``, then renamed
into place (a new model's whole folder, or one new version folder); a delete renames the folder into
``<root>/.trash/`` before removing it. Installs and deletes hold an advisory ``flock`` on ``<root>/.lock`` so
replicas on one volume do not race: under it an upload's config and labels are compared with the model's and
its version assigned above every version the model ever had (``versions``: numbers are never reused).
Listing reads the folder each time, so every replica sees the same models; a broken folder is
``FailedPrecondition`` naming the file, for that model only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nnprobe_services.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from nnprobe_services.repository.artifacts import FILE_NAMES, FORMATS
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models import folder_checks, versions
from nnprobe_services.vision.models.config import ModelConfig

STAGING = ".staging"
TRASH = ".trash"
VERSIONS = versions.FOLDER
#: Staging folders older than this (seconds) are leftovers of a crashed upload and are removed.
STALE_SECONDS = 3600.0


@dataclass(frozen=True)
class VersionEntry:
    """One version's file: ``format`` is ``onnx`` or ``pt2``; ``sha256`` is of ``path``'s bytes."""

    name: str
    version: int
    format: str
    path: Path


@dataclass(frozen=True)
class ModelEntry:
    """A model folder: its config, labels (empty when it names none) and versions, oldest first."""

    name: str
    config: ModelConfig
    labels: tuple[str, ...]
    versions: tuple[VersionEntry, ...]

    @property
    def default_version(self) -> VersionEntry:
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


def _version_file(folder: Path) -> tuple[str, Path] | None:
    for fmt in FORMATS:
        path = folder / FILE_NAMES[fmt]
        if path.is_file():
            return fmt, path
    return None


class ModelRepository:
    """Reads and changes the repository under ``root`` (created when missing)."""

    def __init__(self, root: Path, *, max_model_bytes: int) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes
        (self.root / STAGING).mkdir(parents=True, exist_ok=True)
        (self.root / TRASH).mkdir(exist_ok=True)
        (self.root / VERSIONS).mkdir(exist_ok=True)
        self._sweep()

    # -- reading ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model with a ``config.yaml``, sorted."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / "config.yaml").is_file()
        )

    def get(self, name: str, field: str = "model") -> ModelEntry:
        """The model ``name``; ``NotFound`` when absent, ``FailedPrecondition`` naming the file when its
        folder is broken (unreadable or non-UTF-8 text, a config that does not parse, no model file)."""
        model_config.check_name(name, field)
        folder = self.root / name
        if not (folder / "config.yaml").is_file():
            raise NotFound(f"no model {name!r} in the repository", field=field)
        text = folder_checks.text(self.root, name, "config.yaml", field)
        try:
            config = model_config.parse_yaml(text, f"{name}/config.yaml")
        except InvalidArgument as error:
            raise FailedPrecondition(f"the repository's {error}", field=field) from None
        except (ValueError, TypeError, RecursionError) as error:  # YAML the parser cannot read
            raise FailedPrecondition(f"the repository's {name}/config.yaml: {error}", field=field) from None
        labels: tuple[str, ...] = ()
        if config.labels is not None:
            try:
                labels = model_config.parse_labels(folder_checks.text(self.root, name, config.labels, field))
            except InvalidArgument as error:
                raise FailedPrecondition(f"labels of {name!r}: {error}", field=field) from None
        entries = []
        for version in self._taken(name):
            found = _version_file(folder / str(version))
            if found is not None:
                entries.append(VersionEntry(name, version, found[0], found[1]))
        if not entries:
            raise FailedPrecondition(
                f"model {name!r} has no version folder with a model file (model.onnx or model.pt2)",
                field=field,
            )
        return ModelEntry(name, config, labels, tuple(entries))

    def _taken(self, name: str) -> list[int]:
        return versions.taken(self.root / name)

    def highest_version(self, name: str) -> int:
        """The highest version model ``name`` ever had (0: never used); see ``versions.highest``."""
        return versions.highest(self.root, name)

    def resolve(
        self, name: str, version: int | None, field: str = "model"
    ) -> tuple[ModelEntry, VersionEntry]:
        """The model and one of its versions (``None``: the default version)."""
        entry = self.get(name, field)
        if version is None:
            return entry, entry.default_version
        for candidate in entry.versions:
            if candidate.version == version:
                return entry, candidate
        have = ", ".join(str(v.version) for v in entry.versions)
        raise NotFound(f"model {name!r} has no version {version}; it has {have}", field=f"{field}_version")

    # -- changing --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove crashed uploads' staging folders and the trash."""
        now = time.time()
        for child in (self.root / STAGING).iterdir():
            with contextlib.suppress(OSError):
                if now - child.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(child, ignore_errors=True)
        for child in (self.root / TRASH).iterdir():
            shutil.rmtree(child, ignore_errors=True)

    def begin_upload(
        self,
        name: str,
        *,
        fmt: str,
        size: int,
        sha256: str,
        config_yaml: str,
        labels: str | None,
        version: int | None = None,
    ) -> Upload:
        """Validate an upload's metadata and open its staging folder. Errors name the metadata field."""
        model_config.check_name(name, "metadata.name")
        if fmt not in FORMATS:
            raise InvalidArgument(
                f"must be one of {', '.join(FORMATS)}, got {fmt!r}", field="metadata.format"
            )
        if size <= 0:
            raise InvalidArgument(f"must be positive, got {size}", field="metadata.size_bytes")
        if size > self.max_model_bytes:
            raise ResourceExhausted(
                f"is {size} bytes; the limit is {self.max_model_bytes} (max_model_bytes)",
                field="metadata.size_bytes",
            )
        digest = sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument("must be 64 hexadecimal digits", field="metadata.sha256")
        config = model_config.parse_yaml(config_yaml, "metadata.config_yaml") if config_yaml.strip() else None
        label_list = model_config.parse_labels(labels, "metadata.labels") if labels else None
        if config is None and label_list is not None:
            raise InvalidArgument("labels come with a config; give config_yaml too", field="metadata.labels")
        if config is not None and label_list is not None and config.labels is None:
            config = ModelConfig(**{**config.__dict__, "labels": "labels.txt"})
        if config is not None and config.labels is not None and label_list is None:
            raise InvalidArgument(
                f"names labels file {config.labels!r}; send its lines", field="metadata.labels"
            )
        if config is None and not (self.root / name / "config.yaml").is_file():
            raise InvalidArgument("a new model needs its config", field="metadata.config_yaml")
        if version is not None:
            model_config.check_version(version, "metadata.version")
        folder = self.root / STAGING / uuid.uuid4().hex
        folder.mkdir()
        return Upload(self, folder, name, fmt, size, digest, config, label_list, version)

    def install(self, upload: Upload, validate: Callable[[VersionEntry, ModelConfig, tuple[str, ...]], None]):
        """Check the bytes, run ``validate`` on the staged version, then make it visible atomically.

        The model's config and labels are compared and the version assigned under the repository's lock, so
        of two uploads racing to create one model the second becomes a version of the first only when its
        config and labels are the same, and is refused (``AlreadyExists``) otherwise."""
        try:
            upload.finish()
            existing = self._existing(upload.name)
            config = upload.config or (existing.config if existing is not None else None)
            assert config is not None
            labels = upload.labels if upload.labels is not None else existing.labels if existing else ()
            folder_checks.same_contents(existing, config, labels)
            staged = VersionEntry(upload.name, upload.version or 0, upload.format, upload.file)
            validate(staged, config, labels)
            with self._locked():
                return self._publish(upload, config, labels)
        finally:
            upload.discard()

    def _existing(self, name: str) -> ModelEntry | None:
        try:
            return self.get(name, "metadata.name")
        except NotFound:
            return None

    def _next_version(self, upload: Upload) -> int:
        """The upload's version: above every version the model ever had (versions are never reused)."""
        highest = self.highest_version(upload.name)
        if upload.version is None:
            return highest + 1
        if upload.version in self._taken(upload.name):
            raise AlreadyExists(
                f"model {upload.name!r} has a version {upload.version}; give 0 for the next ({highest + 1})",
                field="metadata.version",
            )
        if upload.version <= highest:
            raise FailedPrecondition(
                f"model {upload.name!r} had versions up to {highest}, and a version number is never reused "
                f"for other weights; give 0 or a version above {highest}",
                field="metadata.version",
            )
        return upload.version

    def _publish(self, upload: Upload, config: ModelConfig, labels: tuple[str, ...]) -> VersionEntry:
        """Rename the staged version into place (hold the lock): the model must still have the config and
        labels the upload was checked with."""
        target = self.root / upload.name
        if target.exists() and not (target / "config.yaml").is_file():
            raise FailedPrecondition(f"{upload.name!r} is a folder but not a model", field="metadata.name")
        existing = self._existing(upload.name)
        folder_checks.same_contents(existing, config, labels)
        version = self._next_version(upload)
        versions.record_highest(self.root, upload.name, version)
        upload.previous_default = existing.default_version.version if existing is not None else 0
        others = [v.version for v in existing.versions] if existing is not None else []
        upload.default_version = config.default_version or max([version, *others])
        version_dir = upload.folder / "model" / str(version)
        version_dir.parent.mkdir(exist_ok=True)
        upload.file.parent.rename(version_dir)
        if existing is None:
            (upload.folder / "model" / "config.yaml").write_text(config.to_yaml())
            if config.labels is not None:
                (upload.folder / "model" / config.labels).write_text(
                    "".join(f"{label}\n" for label in labels)
                )
            (upload.folder / "model").rename(target)
        else:
            version_dir.rename(target / str(version))
        return VersionEntry(upload.name, version, upload.format, target / str(version) / upload.file.name)

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove a model (``version`` None) or one version; return the versions removed. A broken folder
        can be removed too. The highest version stays recorded, so later uploads continue above it."""
        model_config.check_name(name, "name")
        with self._locked():
            if not (self.root / name / "config.yaml").is_file():
                raise NotFound(f"no model {name!r} in the repository", field="name")
            taken = self._taken(name)
            if version is not None and version not in taken:
                have = ", ".join(map(str, taken))
                raise NotFound(f"model {name!r} has no version {version}; it has {have}", field="version")
            if version is not None and len(taken) > 1 and self._pinned_default(name) == version:
                raise FailedPrecondition(
                    f"version {version} is model {name!r}'s default_version; delete the model instead",
                    field="version",
                )
            if version is not None and len(taken) > 1:
                doomed, removed = self.root / name / str(version), [version]
            else:
                doomed, removed = self.root / name, taken
            versions.record_highest(self.root, name, self.highest_version(name))
            trash = self.root / TRASH / uuid.uuid4().hex
            doomed.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return removed

    def _pinned_default(self, name: str) -> int | None:
        """The ``default_version`` model ``name``'s config names (None: none, or the config is broken)."""
        try:
            return self.get(name, "name").config.default_version
        except FailedPrecondition:
            return None


class Upload:
    """An upload in its staging folder: ``write`` chunks, then ``ModelRepository.install``."""

    def __init__(
        self,
        repository: ModelRepository,
        folder: Path,
        name: str,
        fmt: str,
        size: int,
        sha256: str,
        config: ModelConfig | None,
        labels: tuple[str, ...] | None,
        version: int | None,
    ) -> None:
        self.repository = repository
        self.folder = folder
        self.name = name
        self.format = fmt
        self.size = size
        self.sha256 = sha256
        self.config = config
        self.labels = labels
        self.version = version
        #: Set when installed: the version served by default before (0: a new model) and from now on.
        self.previous_default = 0
        self.default_version = 0
        self.file = folder / "version" / FILE_NAMES[fmt]
        self.file.parent.mkdir()
        self.received = 0
        self._digest = hashlib.sha256()
        self._handle = self.file.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ``ResourceExhausted`` past the declared size (the upload is then discarded)."""
        if self.received + len(chunk) > self.size:
            self.discard()
            raise ResourceExhausted(
                f"the upload sent more than the {self.size} bytes its metadata declared", field="chunk"
            )
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """Close the file; ``InvalidArgument`` when it is short or its sha256 differs."""
        self._handle.close()
        if self.received != self.size:
            raise InvalidArgument(
                f"the upload ended after {self.received} of {self.size} bytes (truncated)", field="chunk"
            )
        actual = self._digest.hexdigest()
        if actual != self.sha256:
            raise InvalidArgument(
                f"the bytes' sha256 is {actual}, not {self.sha256}", field="metadata.sha256"
            )

    def discard(self) -> None:
        """Remove the staging folder (nothing of the upload remains)."""
        with contextlib.suppress(OSError):
            self._handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)
