"""The model repository: a folder in Triton's layout, shared by every replica that mounts it.

::

    <root>/<name>/config.yaml            the model's configuration (its task's, read by ``parse_config``)
    <root>/<name>/labels.txt             class names, one per line (a file ``config.yaml`` may name)
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
import dataclasses
import fcntl
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic

from nnprobe_services.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from nnprobe_services.repository import folder_checks, names, versions
from nnprobe_services.repository.artifacts import FORMATS
from nnprobe_services.repository.entries import C, ModelEntry, VersionEntry, version_file
from nnprobe_services.repository.upload import Upload

STAGING = ".staging"
TRASH = ".trash"
VERSIONS = versions.FOLDER
#: Staging folders older than this (seconds) are leftovers of a crashed upload and are removed.
STALE_SECONDS = 3600.0


class ModelRepository(Generic[C]):
    """Reads and changes the repository under ``root`` (created when missing). ``parse_config(text, field)``
    reads a ``config.yaml`` of the tasks this repository holds (``InvalidArgument`` naming ``field``)."""

    def __init__(
        self, root: Path, *, max_model_bytes: int, parse_config: Callable[[str | bytes, str], C]
    ) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes
        self.parse_config = parse_config
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

    def get(self, name: str, field: str = "model") -> ModelEntry[C]:
        """The model ``name``; ``NotFound`` when absent, ``FailedPrecondition`` naming the file when its
        folder is broken (unreadable or non-UTF-8 text, a config that does not parse, no model file)."""
        names.check_name(name, field)
        folder = self.root / name
        if not (folder / "config.yaml").is_file():
            raise NotFound(f"no model {name!r} in the repository", field=field)
        text = folder_checks.text(self.root, name, "config.yaml", field)
        try:
            config = self.parse_config(text, f"{name}/config.yaml")
        except InvalidArgument as error:
            raise FailedPrecondition(f"the repository's {error}", field=field) from None
        except (ValueError, TypeError, RecursionError) as error:  # YAML the parser cannot read
            raise FailedPrecondition(f"the repository's {name}/config.yaml: {error}", field=field) from None
        labels: tuple[str, ...] = ()
        if config.labels is not None:
            try:
                labels = names.parse_labels(folder_checks.text(self.root, name, config.labels, field))
            except InvalidArgument as error:
                raise FailedPrecondition(f"labels of {name!r}: {error}", field=field) from None
        entries = []
        for version in self._taken(name):
            found = version_file(folder / str(version))
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
    ) -> tuple[ModelEntry[C], VersionEntry]:
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
        names.check_name(name, "metadata.name")
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
        config = self.parse_config(config_yaml, "metadata.config_yaml") if config_yaml.strip() else None
        label_list = names.parse_labels(labels, "metadata.labels") if labels else None
        if config is None and label_list is not None:
            raise InvalidArgument("labels come with a config; give config_yaml too", field="metadata.labels")
        if config is not None and label_list is not None and config.labels is None:
            config = dataclasses.replace(config, labels="labels.txt")  # type: ignore[type-var]
        if config is not None and config.labels is not None and label_list is None:
            raise InvalidArgument(
                f"names labels file {config.labels!r}; send its lines", field="metadata.labels"
            )
        if config is None and not (self.root / name / "config.yaml").is_file():
            raise InvalidArgument("a new model needs its config", field="metadata.config_yaml")
        if version is not None:
            names.check_version(version, "metadata.version")
        folder = self.root / STAGING / uuid.uuid4().hex
        folder.mkdir()
        return Upload(self, folder, name, fmt, size, digest, config, label_list, version)

    def install(
        self, upload: Upload, validate: Callable[[VersionEntry, C, tuple[str, ...]], None]
    ) -> VersionEntry:
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

    def _existing(self, name: str) -> ModelEntry[C] | None:
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

    def _publish(self, upload: Upload, config: Any, labels: tuple[str, ...]) -> VersionEntry:
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
        names.check_name(name, "name")
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
