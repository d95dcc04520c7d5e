"""Server configuration: typed defaults, overridden by ``NNPROBE_*`` variables, overridden by flags.

The settings live in sections (``server/settings/``), and the code reads them there, typed:
``config.common.port``, ``config.vision.batch_queue_size``. Setting names are unique across sections, so
``ServerConfig(port=0, device="cpu")`` sorts flat keyword arguments into their sections and, at run time, a
flat name reads the setting from its section (``config.port``, for scripts and tests); the type checker sees
the sections only, so a misspelt or misplaced setting fails ``make lint``. One parser serves the three
servers; only the default port differs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnprobe_services.server.settings import (
    DATABASE_SCHEMES,
    DEFAULT_PORTS,
    FIELD_SECTIONS,
    LOG_FORMATS,
    LOG_LEVELS,
    SECTIONS,
    AttentionSettings,
    CommonSettings,
    Section,
    SequenceSettings,
    VisionSettings,
    check,
    env_name,
)
from nnprobe_services.server.settings.base import EnvironSource
from nnprobe_services.server.settings.flags import add_server_flags, build_parser, flag

__all__ = [
    "DATABASE_SCHEMES",
    "DEFAULT_PORTS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ServerConfig",
    "add_server_flags",
    "build_parser",
    "load_config",
]


@dataclasses.dataclass(frozen=True, init=False)
class ServerConfig:
    """Everything a server needs to start: which service, and its settings by section.

    ``ServerConfig(...)`` stores what it is given without checking it (as a plain record would);
    ``validate()`` checks every setting and returns the checked configuration. ``load_config`` does both.
    """

    #: Which service this process serves: ``vision``, ``sequence`` or ``attention``.
    service: str
    common: CommonSettings
    vision: VisionSettings
    sequence: SequenceSettings
    attention: AttentionSettings

    def __init__(
        self,
        service: str = "attention",
        common: CommonSettings | None = None,
        vision: VisionSettings | None = None,
        sequence: SequenceSettings | None = None,
        attention: AttentionSettings | None = None,
        **settings: Any,
    ) -> None:
        unknown = sorted(set(settings) - set(FIELD_SECTIONS))
        if unknown:
            raise TypeError(f"ServerConfig got unknown settings: {', '.join(unknown)}")
        given: dict[str, Section | None] = {
            "common": common,
            "vision": vision,
            "sequence": sequence,
            "attention": attention,
        }
        object.__setattr__(self, "service", service)
        for name, cls in SECTIONS.items():
            changes = {key: value for key, value in settings.items() if FIELD_SECTIONS[key] == name}
            section = given[name]
            if section is None or changes:
                base = {} if section is None else dict(section)
                section = cls.model_construct(**{**base, **changes})
            object.__setattr__(self, name, section)
        if self.common.port is None and service in DEFAULT_PORTS:
            object.__setattr__(
                self, "common", self.common.model_copy(update={"port": DEFAULT_PORTS[service]})
            )

    if not TYPE_CHECKING:  # the type checker sees sections only, so code reads ``config.vision.…``

        def __getattr__(self, name: str) -> Any:
            """A flat name (``port``) reads the setting from its section (``common``)."""
            section = FIELD_SECTIONS.get(name)
            if section is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return getattr(getattr(self, section), name)

    def validate(self) -> ServerConfig:
        """This configuration with every setting checked (paths expanded), or ``ValueError`` naming the bad
        settings."""
        if self.service not in DEFAULT_PORTS:
            raise ValueError(f"service must be one of {sorted(DEFAULT_PORTS)}, not {self.service!r}")
        sections: dict[str, Any] = {
            name: check(cls, dict(getattr(self, name))) for name, cls in SECTIONS.items()
        }
        return ServerConfig(self.service, **sections)

    def replace(self, **settings: Any) -> ServerConfig:
        """A copy with some settings changed, by flat name (``config.replace(port=0)``); not checked."""
        return ServerConfig(self.service, self.common, self.vision, self.sequence, self.attention, **settings)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        return {name: getattr(getattr(self, section), name) for name, section in FIELD_SECTIONS.items()}

    @property
    def model_repository_dir(self) -> Path:
        """The model repository folder (``model_repository``, else ``<data_dir>/models``)."""
        return Path(self.vision.model_repository or Path(self.common.data_dir) / "models").expanduser()

    @property
    def sequence_model_repository_dir(self) -> Path:
        """SequenceService's model repository (``sequence_model_repository``, else
        ``<data_dir>/sequence/models``)."""
        folder = self.sequence.sequence_model_repository
        return Path(folder or Path(self.common.data_dir) / "sequence" / "models").expanduser()

    @property
    def attention_model_repository_dir(self) -> Path:
        """AttentionService's model repository (``attention_model_repository``, else
        ``<data_dir>/attention/models``)."""
        folder = self.attention.attention_model_repository
        return Path(folder or Path(self.common.data_dir) / "attention" / "models").expanduser()

    @property
    def address(self) -> str:
        """``host:port`` to bind, an IPv6 host in brackets (``[::1]:50051``, ``[::]:50051``)."""
        return self.common.address

    def weights_files(self) -> dict[str, Path]:
        """``model_weights`` as {model name: path}."""
        return self.vision.weights_files()

    def tokens(self) -> list[str]:
        """Accepted bearer tokens (empty: authentication off)."""
        return self.common.tokens()


def load_config(
    service: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: argparse.Namespace | None = None,
) -> ServerConfig:
    """Defaults < ``NNPROBE_*`` environment < flags. Raises ``ValueError`` on a bad value, naming where it
    came from (``NNPROBE_PORT='abc': ...``, ``--port='abc': ...``)."""
    if service not in DEFAULT_PORTS:
        raise ValueError(f"service must be one of {sorted(DEFAULT_PORTS)}, not {service!r}")
    if flags is None:
        flags = build_parser(service).parse_args(argv)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        from_env = EnvironSource(cls, environ)()
        from_flags = {
            key: getattr(flags, key) for key in cls.model_fields if getattr(flags, key, None) is not None
        }
        origins = {key: f"{env_name(key)}={value!r}" for key, value in from_env.items()}
        origins |= {key: f"{flag(key)}={value!r}" for key, value in from_flags.items()}
        sections[name] = check(cls, {**from_env, **from_flags}, origins)
    return ServerConfig(service, **sections)
