"""Settings of the attention server."""

from __future__ import annotations

from pydantic import Field

from nnprobe_services.server.settings.base import Section


class AttentionSettings(Section):
    """Settings the attention server reads."""

    max_permutations: int = Field(
        1_000_000, gt=0, description="Most permutations one attention check may evaluate."
    )
