"""Server settings in sections: ``common`` (every server), ``vision``, ``sequence`` and ``attention``.

Each section is a pydantic-settings class whose fields carry a type, a default, a description and their
checks. A setting ``name`` is read from ``NNPROBE_<NAME>`` and the flag ``--<name>`` (underscores as dashes);
names are unique across sections, so ``ServerConfig`` can also be read and built flat (``config.port``).
"""

from __future__ import annotations

from nnprobe_services.server.settings.attention import AttentionSettings
from nnprobe_services.server.settings.base import Section, check, env_name
from nnprobe_services.server.settings.common import DEFAULT_PORTS, LOG_FORMATS, LOG_LEVELS, CommonSettings
from nnprobe_services.server.settings.sequence import DATABASE_SCHEMES, SequenceSettings
from nnprobe_services.server.settings.vision import VisionSettings

#: The sections in the order ``--help`` lists them.
SECTIONS: dict[str, type[Section]] = {
    "common": CommonSettings,
    "vision": VisionSettings,
    "sequence": SequenceSettings,
    "attention": AttentionSettings,
}


def _field_sections() -> dict[str, str]:
    owners: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for name in cls.model_fields:
            if name in owners:
                raise TypeError(f"setting {name!r} is in both {owners[name]} and {section}")
            owners[name] = section
    return owners


#: Which section holds each setting: {``"port"``: ``"common"``, ``"batch_queue_size"``: ``"vision"``, ...}.
FIELD_SECTIONS = _field_sections()

__all__ = [
    "DATABASE_SCHEMES",
    "DEFAULT_PORTS",
    "FIELD_SECTIONS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SECTIONS",
    "AttentionSettings",
    "CommonSettings",
    "Section",
    "SequenceSettings",
    "VisionSettings",
    "check",
    "env_name",
]
