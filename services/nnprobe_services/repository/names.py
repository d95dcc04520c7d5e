"""Names and versions in the model repository: what a model folder and a version folder may be called
(Triton's rules, minus anything that could leave the repository folder), and text decoding of what a client
sends for the repository's text files."""

from __future__ import annotations

import re

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import quote

#: Model names: what Triton allows, minus anything that could leave the repository folder.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_VERSION = 10**9
MAX_LABELS = 100_000


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is a valid model name (letters, digits, ``_ . -``, at most 64, not starting with a
    dot or dash); else ``InvalidArgument`` naming ``field``."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"{quote(name)} is not a model name: use 1 to 64 letters, digits, '_', '.', '-', starting with a "
            "letter or digit, without '..'",
            field=field,
        )
    return name


def is_version_name(text: str) -> bool:
    """Whether ``text`` names a version folder: ASCII decimal digits without a leading zero. (``str.isdigit``
    alone also accepts other scripts' digits and superscripts, which ``int`` reads differently or refuses.)"""
    return text.isascii() and text.isdigit() and not text.startswith("0")


def check_version(version: str | int, field: str = "version") -> int:
    """A model version: a positive integer (Triton's folder names ``1``, ``2``...)."""
    text = str(version)
    if not is_version_name(text) or not 1 <= int(text) <= MAX_VERSION:
        raise InvalidArgument(
            f"{quote(version)} is not a version: use an integer in 1..{MAX_VERSION}", field=field
        )
    return int(text)


def decode(data: str | bytes, field: str) -> str:
    """``data`` as text: bytes must be UTF-8 (``InvalidArgument`` naming ``field`` and the first bad byte)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); save it as UTF-8",
            field=field,
        ) from None


def parse_labels(text: str | bytes, field: str = "labels") -> tuple[str, ...]:
    """One label per line of text or UTF-8 bytes (trailing blank lines ignored); at most ``MAX_LABELS``."""
    lines = decode(text, field).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_LABELS:
        raise InvalidArgument(f"has {len(lines)} lines; the limit is {MAX_LABELS}", field=field)
    return tuple(line.strip() for line in lines)
