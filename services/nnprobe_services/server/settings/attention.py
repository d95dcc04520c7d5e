"""Settings of the attention server."""

from __future__ import annotations

from pydantic import Field

from nnprobe_services.server.settings.base import Section, UserPath


class AttentionSettings(Section):
    """Settings the attention server reads."""

    max_permutations: int = Field(
        1_000_000, gt=0, description="Most permutations one attention check may evaluate."
    )
    attention_model_repository: UserPath | None = Field(
        None,
        description="The attention model repository (token_model models: <name>/config.yaml, "
        "<name>/<version>/model.onnx or model.pt2); unset: <data_dir>/attention/models. Replicas that mount "
        "one folder share it; files are limited by max_model_bytes and max_model_nodes.",
    )
