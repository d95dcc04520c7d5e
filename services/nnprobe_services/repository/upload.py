"""An upload in the repository's staging folder: chunks written to ``<root>/.staging/<id>/version/model.*``
with their count and sha256 checked against the declared metadata before ``ModelRepository.install``."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.repository.artifacts import FILE_NAMES

if TYPE_CHECKING:
    from nnprobe_services.repository.folder import ModelRepository


class Upload:
    """An upload in its staging folder: ``write`` chunks, then ``ModelRepository.install``."""

    def __init__(
        self,
        repository: ModelRepository[Any],
        folder: Path,
        name: str,
        fmt: str,
        size: int,
        sha256: str,
        config: Any,
        labels: tuple[str, ...] | None,
        version: int | None,
    ) -> None:
        self.repository = repository
        self.folder = folder
        self.name = name
        self.format = fmt
        self.size = size
        self.sha256 = sha256
        #: The task's config (``entries.RepositoryConfig``) the upload came with; None: the model's own.
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
