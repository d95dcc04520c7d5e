"""Command-line flags for every setting, grouped by section; each flag's help gives its description, its
``NNPROBE_*`` variable and its default. Flags keep the text given (unset: ``None``); the sections parse it."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from nnprobe_services.server.settings import DEFAULT_PORTS, SECTIONS, env_name


def flag(name: str) -> str:
    """``max_message_bytes`` -> ``--max-message-bytes``."""
    return "--" + name.replace("_", "-")


def build_parser(service: str) -> argparse.ArgumentParser:
    """The parser of ``python -m nnprobe_services.<service>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m nnprobe_services.{service}",
        usage="%(prog)s [--SETTING VALUE ...]",
        description=f"Run the nnprobe {service} server. Settings come from their defaults, then NNPROBE_* "
        "variables, then flags. Every server accepts every flag; each reads the common section and its own.",
    )
    add_server_flags(parser, service)
    return parser


def add_server_flags(parser: argparse.ArgumentParser, service: str | None = None) -> None:
    """One argument group per section, a flag per setting. ``service`` picks the port shown as default
    (``None``: every service's)."""
    for section, cls in SECTIONS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        group = parser.add_argument_group(f"{section} settings", summary)
        for name, field in cls.model_fields.items():
            options = choices(field)
            group.add_argument(
                flag(name),
                dest=name,
                default=None,
                choices=options,
                metavar=None if options else metavar(field),
                help=help_text(name, field, service),
            )


def help_text(name: str, field: FieldInfo, service: str | None = None) -> str:
    """``<description> [NNPROBE_<NAME>; default: <default>]``, escaped for argparse."""
    text = f"{field.description} [{env_name(name)}; default: {default_text(name, field, service)}]"
    return text.replace("%", "%%")


def default_text(name: str, field: FieldInfo, service: str | None = None) -> str:
    """A setting's default as ``--help`` shows it: ``unset``, ``true``, ``64``, ``/root/.cache/nnprobe``."""
    if name == "port":
        if service is not None:
            return str(DEFAULT_PORTS[service])
        return ", ".join(f"{each} {port}" for each, port in DEFAULT_PORTS.items())
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def metavar(field: FieldInfo) -> str:
    """``N``, ``X``, ``PATH``, ``{true,false}`` or ``TEXT``: what a flag's value looks like."""
    kinds = {_bare(kind) for kind in typing.get_args(field.annotation) or (field.annotation,)}
    for kind, name in ((bool, "{true,false}"), (int, "N"), (float, "X"), (Path, "PATH")):
        if kind in kinds:
            return name
    return "TEXT"


def _bare(kind: object) -> object:
    """``Annotated[Path, ...]`` -> ``Path``."""
    return typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind


def choices(field: FieldInfo) -> tuple[str, ...] | None:
    """The values of a ``Literal`` setting (argparse checks them), else ``None``."""
    if typing.get_origin(field.annotation) is typing.Literal:
        return tuple(str(value) for value in typing.get_args(field.annotation))
    return None
