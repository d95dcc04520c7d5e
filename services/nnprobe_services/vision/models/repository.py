"""VisionService's model repository: the shared repository library (``nnprobe_services.repository.folder``:
Triton's layout, staging and atomic renames, locking, versions never reused) holding image classifiers,
whose ``config.yaml`` is read by ``config.parse_yaml`` (input size, preprocessing, labels)."""

from __future__ import annotations

from pathlib import Path

from nnprobe_services.repository import folder
from nnprobe_services.repository.entries import ModelEntry, VersionEntry
from nnprobe_services.repository.folder import STAGING, STALE_SECONDS, TRASH, VERSIONS
from nnprobe_services.repository.upload import Upload
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models.config import ModelConfig

__all__ = [
    "STAGING",
    "STALE_SECONDS",
    "TRASH",
    "VERSIONS",
    "ModelEntry",
    "ModelRepository",
    "Upload",
    "VersionEntry",
]


class ModelRepository(folder.ModelRepository[ModelConfig]):
    """The image classifiers under ``root`` (created when missing); see ``repository.folder``."""

    def __init__(self, root: Path, *, max_model_bytes: int) -> None:
        super().__init__(root, max_model_bytes=max_model_bytes, parse_config=model_config.parse_yaml)
