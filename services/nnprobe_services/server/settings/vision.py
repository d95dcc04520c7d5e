"""Settings of the vision server: classifiers and their weights, dynamic batching, image and attack limits,
the model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from nnprobe_services.server.settings.base import ExistingFolder, Section, UserPath


class VisionSettings(Section):
    """Settings the vision server reads."""

    default_model: str = Field("efficientnet_lite0", description="Classifier used when a request names none.")
    weights_dir: ExistingFolder | None = Field(
        None,
        description="Folder of classifier weights with torchvision's file names (alexnet-owt-7be5be79.pth), "
        "searched after model_weights and before the torch hub cache ($TORCH_HOME/hub/checkpoints).",
    )
    model_weights: str | None = Field(
        None,
        description="Explicit weights files, name=path pairs separated by commas (alexnet=/w/alexnet.pth).",
    )
    weights_download_timeout: float = Field(
        5.0,
        ge=0,
        description="Seconds to wait for a missing weights file's download into the hub cache; 0 never "
        "downloads.",
    )
    dynamic_batching: bool = Field(
        True,
        description="Gather concurrent Classify calls into batches (false: each call runs its own forward "
        "pass).",
    )
    batch_max_size: int = Field(
        0, ge=0, description="Most images in one batched forward pass; 0 picks 16 on a CPU and 64 on a GPU."
    )
    batch_max_delay_ms: float | None = Field(
        None,
        ge=0,
        le=60_000,
        description="Longest wait, in milliseconds, for a batch to fill once its first image is queued; "
        "unset picks 5 on a CPU and 2 on a GPU.",
    )
    batch_queue_size: int = Field(
        256,
        gt=0,
        description="Most images waiting in a model's batching queue before Classify gets "
        "RESOURCE_EXHAUSTED.",
    )
    max_image_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest encoded image, in bytes.")
    max_image_pixels: int = Field(
        89_478_485,
        gt=0,
        description="Largest image, in pixels (width * height), checked from the header before decoding.",
    )
    max_attack_steps: int = Field(1000, gt=0, description="Most iterations one adversarial attack may run.")
    transfer_connect_timeout: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Longest wait, in seconds, for a transfer address's server to accept a connection (a "
        "replica that is restarting), within what is left of the request's deadline; 0 does not wait for one "
        "that is down.",
    )
    model_repository: UserPath | None = Field(
        None,
        description="The model repository (Triton's layout: <name>/config.yaml, <name>/<version>/model.onnx "
        "or model.pt2); unset: <data_dir>/models. Replicas that mount one folder share it.",
    )
    max_model_bytes: int = Field(
        1 << 30,
        gt=0,
        description="Largest model file UploadModel accepts (and repository model with its external data), "
        "in bytes.",
    )
    max_model_nodes: int = Field(100_000, gt=0, description="Most graph nodes a repository model may have.")
    builtin_backend: Literal["auto", "onnxruntime", "pytorch"] = Field(
        "auto",
        description="Engine of the built-in classifiers: auto (ONNX Runtime on a CPU through an export made "
        "once and cached under cache_dir, or on a GPU its CUDA provider supports; else PyTorch), onnxruntime "
        "or pytorch.",
    )

    datasets_dir: ExistingFolder | None = Field(
        None,
        description="Folder whose ImageFolder-layout subfolders (<class>/<image>) UploadDataset may import "
        "by a relative name; unset: server folders cannot be imported.",
    )
    max_dataset_images: int = Field(10_000, gt=0, description="Most images one data set may hold.")
    max_dataset_bytes: int = Field(
        512 << 20, gt=0, description="Most encoded image bytes one data set may hold."
    )
    robustness_database_url: str | None = Field(
        None,
        repr=False,
        description="The robustness job database: unset keeps jobs in <data_dir>/robustness.sqlite3; a "
        "postgresql:// URL lets vision replicas (sharing data_dir) share one queue. Replica id, lease and "
        "poll seconds are the sequence section's.",
    )

    @field_validator("default_model")
    @classmethod
    def _model_named(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("default_model must not be empty")
        return name

    @field_validator("model_weights")
    @classmethod
    def _pairs(cls, weights: str | None) -> str | None:
        for name, path in parse_weights(weights).items():
            if not name or not path.name:
                raise ValueError(f"model_weights entries are name=path, got {weights!r}")
        return weights

    def weights_files(self) -> dict[str, Path]:
        """``model_weights`` as {model name: path}."""
        return parse_weights(self.model_weights)


def parse_weights(weights: str | None) -> dict[str, Path]:
    """``"a=/w/a.pth, b=~/b.pth"`` as {``a``: ``/w/a.pth``, ``b``: ``<home>/b.pth``}."""
    files: dict[str, Path] = {}
    for entry in filter(None, (e.strip() for e in (weights or "").split(","))):
        name, sep, path = entry.partition("=")
        if not sep:
            raise ValueError(f"model_weights entries are name=path, not {entry!r}")
        files[name.strip()] = Path(path.strip()).expanduser()
    return files
