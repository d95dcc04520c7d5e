"""What every settings section shares: the pydantic-settings base class, path types, reading ``NNPROBE_*``
variables from any mapping, and turning validation errors into one line that names the setting."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

#: Every setting ``name`` is read from the variable ``NNPROBE_<NAME>``.
ENV_PREFIX = "NNPROBE_"


def _expand(path: Path) -> Path:
    return path.expanduser()


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no such file {path}")
    return path


def _existing_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"no such folder {path}")
    return path


#: A path, ``~`` expanded.
UserPath = Annotated[Path, AfterValidator(_expand)]
#: A path to a file that exists, ``~`` expanded.
ExistingFile = Annotated[Path, AfterValidator(_expand), AfterValidator(_existing_file)]
#: A path to a folder that exists, ``~`` expanded.
ExistingFolder = Annotated[Path, AfterValidator(_expand), AfterValidator(_existing_folder)]


class Section(BaseSettings):
    """A group of settings. ``Section()`` reads keyword arguments, then ``NNPROBE_*`` variables (pydantic-
    settings' usual order); ``load_config`` reads any mapping of variables and the command line's flags."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings


class EnvironSource(EnvSettingsSource):
    """The ``NNPROBE_*`` variables of one mapping (a test's dict, or ``os.environ``) for one section."""

    def __init__(self, settings_cls: type[Section], environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def env_name(field: str) -> str:
    """The variable that sets ``field``: ``max_message_bytes`` -> ``NNPROBE_MAX_MESSAGE_BYTES``."""
    return ENV_PREFIX + field.upper()


S = TypeVar("S", bound=Section)


def check(cls: type[S], values: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> S:
    """``cls`` checked from ``values`` (defaults fill the rest); else ``ValueError`` naming each bad setting.

    ``origins`` maps a setting to where its value came from (``NNPROBE_PORT='abc'``), put before its error.
    """
    try:
        return cls.model_validate(dict(values))
    except ValidationError as error:
        origins = origins or {}
        lines = []
        for detail in error.errors(include_url=False):
            name = str(detail["loc"][0]) if detail["loc"] else ""
            text = describe(cls, name, detail)
            lines.append(f"{origins[name]}: {text}" if name in origins else text)
        raise ValueError("; ".join(lines)) from None


def describe(cls: type[Section], name: str, detail: Mapping[str, Any]) -> str:
    """One validation error as a sentence that starts with the setting's name."""
    kind, context, value = detail["type"], detail.get("ctx") or {}, detail.get("input")
    if kind == "value_error":
        text = str(context.get("error", detail["msg"]))
        return text if not name or text.startswith(name) else f"{name}: {text}"
    if kind == "literal_error":
        return f"{name} must be one of {context['expected']}, not {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{name} must be {bounds(cls, name)}, not {value!r}"
    return f"{name}: {detail['msg']}" if name else str(detail["msg"])


def bounds(cls: type[Section], name: str) -> str:
    """``in 0..65535``, ``positive``, ``>= 0``: the range a numeric setting's constraints allow."""
    limits: dict[str, Any] = {}
    for constraint in cls.model_fields[name].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(constraint, key, None) is not None:
                limits[key] = getattr(constraint, key)
    if "ge" in limits and "le" in limits:
        return f"in {limits['ge']}..{limits['le']}"
    if limits.get("gt") == 0 and len(limits) == 1:
        return "positive"
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[key]} {limit}" for key, limit in limits.items())
