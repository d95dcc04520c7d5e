"""Every model the vision service serves, loaded once per process: the built-in classifiers (weights files,
served by PyTorch or by ONNX Runtime through an export made once and cached) and the models of the model
repository (``model.onnx`` through ONNX Runtime, ``model.pt2`` through PyTorch).

A repository version is loaded and checked before it is served or installed: its one input must be the
tensor its config declares (``inputs``: (N, 3, H, W) or ``nhwc`` (N, H, W, 3), float32 or uint8, at its
configured size; a mismatch is refused on the config, naming the input) and it must return one
(N, classes) float tensor, logits or (``output: probabilities``) a softmax's, with as many classes as it
has labels (``outputs``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound
from nnprobe_services.repository import artifacts
from nnprobe_services.vision.models import backends, inputs, outputs, registry
from nnprobe_services.vision.models.config import ModelConfig
from nnprobe_services.vision.models.registry import (
    LoadedModel,
    ModelRecord,
    Preprocessing,
    WeightsMissing,
)
from nnprobe_services.vision.models.repository import ModelRepository, Upload, VersionEntry

log = logging.getLogger("nnprobe.vision.models")
BUILTIN_BACKENDS = ("auto", "onnxruntime", "pytorch")


@dataclass(frozen=True)
class ModelLimits:
    """Limits on repository models: file size with external data (bytes) and graph nodes."""

    max_bytes: int = 1 << 30
    max_nodes: int = 100_000


def transform_of(config: ModelConfig) -> backends.PixelTransform:
    return backends.PixelTransform(
        scale=config.value_range[1],
        bgr=config.channel_order == "bgr",
        mean=config.mean,
        std=config.std,
        nhwc=config.layout == "nhwc",
        uint8=config.dtype == "uint8",
    )


def load_version(
    entry: VersionEntry,
    config: ModelConfig,
    labels: tuple[str, ...],
    device: torch.device,
    limits: ModelLimits,
    *,
    field: str = "file",
    config_field: str | None = None,
) -> LoadedModel:
    """Load and check one repository version; ``InvalidArgument`` (naming ``field``, or ``config_field``
    when the graph's input is not the one the config declares or the test forward pass fails) when it is
    unusable."""
    config_field = config_field or field
    detected = artifacts.detect_format(entry.path, field)
    if detected != entry.format:
        raise InvalidArgument(f"holds a {detected} model, not the {entry.format} model declared", field=field)
    transform = transform_of(config)
    backend: backends.InferenceBackend
    if entry.format == "onnx":
        artifacts.check_onnx(entry.path, max_nodes=limits.max_nodes, max_bytes=limits.max_bytes, field=field)
        backend = backends.OnnxRuntimeBackend(entry.path, transform, device)
        outputs.check_onnx_outputs(backend.session, field)
        inputs.check(inputs.onnx_input(backend.session), config, config_field)
        architecture = "ONNX graph"
    else:
        program = artifacts.load_pt2(
            entry.path, max_nodes=limits.max_nodes, max_bytes=limits.max_bytes, field=field
        )
        outputs.check_pt2_outputs(program, field)
        inputs.check(inputs.pt2_input(program), config, config_field)
        backend = backends.TorchBackend(nn.Sequential(transform, program.module()), device)
        architecture = "torch.export program"
    classes, max_batch = _probe(backend, config, labels, field, config_field)
    if config.output == "probabilities":
        backend = outputs.ProbabilityOutputs(backend)
    record = ModelRecord(
        name=entry.name,
        architecture=architecture,
        source=f"model repository: {entry.name}/{entry.version}/{entry.path.name}",
        file_name=entry.path.name,
        preprocessing=Preprocessing(
            config.resize, (config.height, config.width), config.interpolation, config.mean, config.std
        ),
        num_classes=classes,
    )
    loaded = LoadedModel(
        record, backend, entry.path, registry.sha256_of(entry.path), device, labels, entry.version, max_batch
    )
    if config.dtype == "uint8":
        loaded.no_gradients = (
            "takes uint8 input (config.yaml input.dtype: uint8): the rounding and cast to integers at "
            "its input have no gradient, so it cannot be attacked; it still classifies and serves as a "
            "transfer model"
        )
    return loaded


def _probe(
    backend: backends.InferenceBackend,
    config: ModelConfig,
    labels: tuple[str, ...],
    field: str,
    config_field: str,
) -> tuple[int, int]:
    """(classes, largest batch: 0 unlimited, 1 when the graph's batch is fixed at one)."""
    side = (config.height, config.width)
    try:
        logits = backend.predict(torch.zeros(1, 3, *side))
    except Exception as error:  # the backends' own error types for a shape or type mismatch
        fed = (1, *side, 3) if config.layout == "nhwc" else (1, 3, *side)
        raise inputs.probe_failure(error, fed, config, config_field) from None
    classes = outputs.check_probe(logits, config, labels, field)
    try:
        batched = backend.predict(torch.zeros(2, 3, *side))
        max_batch = 0 if tuple(batched.shape) == (2, classes) else 1
    except Exception:  # a graph exported with a fixed batch of one
        max_batch = 1
    return classes, max_batch


class ModelStore:
    """Loads each model once per process and device; built-ins resolve weights as configured."""

    def __init__(
        self,
        device: torch.device,
        *,
        explicit: dict[str, Path] | None = None,
        weights_dir: Path | None = None,
        download_timeout: float = 0.0,
        repository: ModelRepository | None = None,
        builtin_backend: str = "pytorch",
        onnx_cache: Path | None = None,
        limits: ModelLimits | None = None,
    ) -> None:
        if builtin_backend not in BUILTIN_BACKENDS:
            raise ValueError(f"builtin_backend must be one of {BUILTIN_BACKENDS}, not {builtin_backend!r}")
        self.device = device
        self.explicit = dict(explicit or {})
        self.weights_dir = weights_dir
        self.download_timeout = download_timeout
        self.repository = repository
        self.builtin_backend = builtin_backend
        self.onnx_cache = onnx_cache
        self.limits = limits or ModelLimits()
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    # -- names -----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Built-in models first, then the repository's."""
        builtin = list(registry.records())
        extra = self.repository.names() if self.repository is not None else []
        return builtin + [name for name in extra if name not in builtin]

    @staticmethod
    def is_builtin(name: str) -> bool:
        return name in registry.records()

    def location(self, name: str) -> registry.WeightsLocation:
        return registry.locate(registry.records()[name], self.explicit.get(name), self.weights_dir)

    def loaded(self, name: str, version: int = 0) -> LoadedModel | None:
        """The model if this process has it loaded (no loading)."""
        with self._lock:
            return self._loaded.get((name, version))

    def forget(self, name: str) -> None:
        """Drop every loaded version of ``name`` (after a delete)."""
        with self._lock:
            for key in [k for k in self._loaded if k[0] == name]:
                del self._loaded[key]

    def describe(self, name: str, field: str = "model") -> tuple[ModelRecord, tuple[str, ...]]:
        """The model's record and labels without loading it (``num_classes`` 0: known once loaded).

        Raises ``NotFound`` for a name that is neither built in nor in the repository.
        """
        if self.is_builtin(name):
            record = registry.records()[name]
            return record, registry.imagenet_labels() if record.num_classes == 1000 else ()
        repository = self._repository(field, missing=NotFound)
        entry = repository.get(name, field)
        loaded = self.loaded(name, entry.default_version.version)
        if loaded is not None:
            return loaded.record, loaded.labels
        config = entry.config
        record = ModelRecord(
            name=name,
            architecture="ONNX graph" if entry.default_version.format == "onnx" else "torch.export program",
            source="model repository",
            file_name=entry.default_version.path.name,
            preprocessing=Preprocessing(
                config.resize, (config.height, config.width), config.interpolation, config.mean, config.std
            ),
            num_classes=len(entry.labels),
        )
        return record, entry.labels

    def _repository(self, field: str, missing: type[Exception] = FailedPrecondition) -> ModelRepository:
        if self.repository is None:
            if missing is NotFound:
                raise NotFound(
                    f"no such model; the built-in models are {', '.join(registry.records())}",
                    field=field,
                )
            raise FailedPrecondition("this server has no model repository", field=field)
        return self.repository

    # -- repository changes ----------------------------------------------------------------------------
    def begin_upload(self, name: str, **metadata) -> Upload:
        """Open an upload (``ModelRepository.begin_upload``); built-in names are refused."""
        if self.is_builtin(name):
            raise InvalidArgument(f"{name!r} is a built-in model; choose another name", field="metadata.name")
        return self._repository("metadata.name").begin_upload(name, **metadata)

    def install(self, upload: Upload) -> VersionEntry:
        """Check, load and publish an upload; the new version is served from then on."""
        installed = self._repository("metadata.name").install(upload, self.validate)
        self.forget(installed.name)
        return installed

    def delete(self, name: str, version: int | None) -> list[int]:
        """Remove a repository model or version and unload it."""
        if self.is_builtin(name):
            raise FailedPrecondition(f"{name!r} is a built-in model; it cannot be deleted", field="name")
        removed = self._repository("name", missing=NotFound).delete(name, version)
        self.forget(name)
        return removed

    # -- loading ---------------------------------------------------------------------------------------
    def version(self, name: str, version: int, field: str) -> int | None:
        """Request field ``field`` as a repository version of model ``name``: None for 0 (its default
        version), checked without loading anything.

        Raises ``InvalidArgument`` on ``field`` for a negative version or one given for a built-in model, and
        ``NotFound`` for a version the repository does not hold.
        """
        if version < 0:
            raise InvalidArgument(f"must be >= 0, got {version}", field=field)
        if not version:
            return None
        if self.is_builtin(name) or self.repository is None:
            raise InvalidArgument(f"built-in model {name!r} has no repository versions; give 0", field=field)
        entry = self.repository.get(name, field)
        if all(v.version != version for v in entry.versions):
            have = ", ".join(str(v.version) for v in entry.versions)
            raise NotFound(f"model {name!r} has no version {version}; it has {have}", field=field)
        return version

    def get(self, name: str, version: int | None = None, field: str = "model") -> LoadedModel:
        """The loaded model ``name`` (a repository ``version``, default its default version).

        Raises ``NotFound`` for unknown names and versions, ``WeightsMissing`` for absent built-in weights and
        ``FailedPrecondition`` for a repository version that no longer loads.
        """
        if self.is_builtin(name):
            if version:
                raise InvalidArgument(
                    f"built-in model {name!r} has no repository versions", field=f"{field}_version"
                )
            return self._once((name, 0), lambda: self._load_builtin(name))
        if self.repository is None:
            raise NotFound(
                f"no model {name!r}; the available models are {', '.join(self.names())}", field=field
            )
        entry, chosen = self.repository.resolve(name, version, field)
        key = (name, chosen.version)
        current = self.loaded(*key)
        if current is not None and current.version != registry.sha256_of(chosen.path):
            self.forget(name)  # replaced by another replica (deleted and uploaded again)

        def load() -> LoadedModel:
            try:
                return load_version(chosen, entry.config, entry.labels, self.device, self.limits, field=field)
            except InvalidArgument as error:
                raise FailedPrecondition(
                    f"model {name!r} version {chosen.version}: {error.message}", field=field
                ) from None
            except OSError as error:  # the file went away or cannot be read
                raise FailedPrecondition(
                    f"model {name!r} version {chosen.version}: {chosen.path.name} cannot be read: {error}",
                    field=field,
                ) from None

        return self._once(key, load)

    def _once(self, key: tuple[str, int], load) -> LoadedModel:
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            loaded = load()
            log.info(
                "loaded %s (sha256 %s) with %s on %s",
                key[0],
                loaded.version[:12],
                loaded.backend.name,
                self.device,
            )
            with self._lock:
                self._loaded[key] = loaded
            return loaded

    def validate(self, entry: VersionEntry, config: ModelConfig, labels: tuple[str, ...]) -> None:
        """Load a staged upload as it would be served (``ModelRepository.install``'s check)."""
        load_version(
            entry,
            config,
            labels,
            self.device,
            self.limits,
            field="chunk",
            config_field="metadata.config_yaml",
        )

    def _load_builtin(self, name: str) -> LoadedModel:
        record = registry.records()[name]
        where = self.location(name)
        path = where.path
        if path is None:
            try:
                path = registry.download(record, self.download_timeout)
            except WeightsMissing as error:
                raise WeightsMissing(
                    f"weights file {record.file_name} for model {name!r} not found; searched "
                    f"{', '.join(where.searched)}; {error}"
                ) from None
        loaded = registry.load(record, path, self.device)
        if self.builtin_uses_onnx():
            onnx_backend = self._onnx_builtin(loaded)
            if onnx_backend is not None:
                loaded.backend = onnx_backend
        return loaded

    def builtin_uses_onnx(self) -> bool:
        """Whether built-in models are served by ONNX Runtime (see ``builtin_backend``)."""
        if self.builtin_backend == "pytorch" or self.onnx_cache is None:
            return False
        if self.builtin_backend == "onnxruntime":
            return True
        # auto: ONNX Runtime where it is the faster engine: the CPU, or a GPU its CUDA provider can use.
        return backends.onnx_providers(self.device)[0] != "CPUExecutionProvider" or self.device.type == "cpu"

    def _onnx_builtin(self, loaded: LoadedModel) -> backends.OnnxRuntimeBackend | None:
        """ONNX Runtime over the model's cached export (made on first use, checked to 1e-4 of PyTorch)."""
        assert self.onnx_cache is not None
        path = self.onnx_cache / f"{loaded.record.name}-{loaded.version[:16]}-torch{torch.__version__}.onnx"
        if not path.is_file():
            try:
                difference = backends.export_onnx(
                    loaded.backend.differentiable(), path, loaded.record.preprocessing.crop
                )
            except (ValueError, RuntimeError) as error:
                log.warning("serving %s with PyTorch: the ONNX export failed: %s", loaded.record.name, error)
                return None
            log.info("exported %s to %s (max |logit difference| %.2g)", loaded.record.name, path, difference)
        identity = backends.identity_transform()  # the export holds the normalisation
        backend = backends.OnnxRuntimeBackend(path, identity, self.device)
        backend._module = loaded.backend.differentiable()
        return backend
