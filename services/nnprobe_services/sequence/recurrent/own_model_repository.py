"""The models AnalyzeGradients analyses, from SequenceService's repository (``repository.task_models``): a
name and version resolved, the file loaded in the requested precision, moved to the server's device, and its
``config.yaml`` read into the shapes the analyses need (``own_model_convert.ResolvedModel``)."""

from __future__ import annotations

import torch

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.repository.task_models import TaskModels
from nnprobe_services.sequence.recurrent.own_model_calls import check_inference_graph, on_device
from nnprobe_services.sequence.recurrent.own_model_convert import Resolve, ResolvedModel


def resolver(models: TaskModels, device: torch.device) -> Resolve:
    """``resolve(name, version, dtype)`` over ``models`` (version 0: the default one). Raises ``NotFound``
    on ``model`` / ``model_version``; ``FailedPrecondition`` on ``model`` for a broken folder, a file that no
    longer loads, or a model exported for a fixed batch other than 1 (one sequence is analysed as a batch
    of one)."""

    def resolve(name: str, version: int, dtype: torch.dtype) -> ResolvedModel:
        loaded = models.load(name, version or None, dtype, field="model")  # loads take turns (load_pt2)
        config = loaded.config
        check_inference_graph(loaded.module)
        if config.batch_size not in (None, 1):
            raise FailedPrecondition(
                f"model {name!r} was exported for batch_size {config.batch_size}; the gradient analysis runs "
                "one sequence as a batch of one: export it with a dynamic batch (torch.export.Dim) or B = 1",
                field="model",
            )
        return ResolvedModel(
            name=loaded.name,
            version=loaded.version,
            task=config.task,
            module=on_device(loaded.module.requires_grad_(False), device),
            input_size=config.input_size or 0,
            state_sizes=config.state_sizes,
            vocabulary=config.vocabulary,
            sequence_length=config.sequence_length,
        )

    return resolve
