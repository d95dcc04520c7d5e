"""Reading a repository ``config.yaml`` into typed values: the document itself (bounded, plain data, see
``yaml_loading``) and its keys, each refusal ``InvalidArgument`` naming the key's path
(``config.input.height``) with what was expected and what was found."""

from __future__ import annotations

from typing import Any

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository import yaml_loading
from nnprobe_services.repository.names import decode
from nnprobe_services.repository.quoting import quote

MAX_CONFIG_BYTES = 64 * 1024


def load_document(text: str | bytes, field: str) -> Any:
    """The YAML document of text or UTF-8 bytes (``yaml_loading.load``: plain data, no aliases, bounded
    depth, no repeated keys), at most ``MAX_CONFIG_BYTES``; ``InvalidArgument`` naming ``field``."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"holds {size} bytes; the limit is {MAX_CONFIG_BYTES}", field=field)
    return yaml_loading.load(decode(text, field), field)


def mapping(value: Any, field: str) -> dict[str, Any]:
    """``value`` as a mapping (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"must be a mapping, got {type(value).__name__}", field=field)
    return value


def unknown_keys(document: dict[str, Any], known: tuple[str, ...], field: str) -> None:
    """``InvalidArgument`` listing the keys of ``document`` outside ``known``."""
    extra = [quote(key, 40) for key in document if key not in known]
    if extra:
        listed = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise InvalidArgument(f"unknown key(s) {listed}; known: {', '.join(known)}", field=field)


def integer(value: Any, field: str, low: int, high: int) -> int:
    """``value`` as an integer in ``low..high`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"must be an integer in {low}..{high}, got {quote(value)}", field=field)
    return value


def choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    """``value`` lower-cased, one of ``choices``."""
    text = value.lower() if isinstance(value, str) else None
    if text not in choices:
        raise InvalidArgument(f"must be one of {', '.join(choices)}, got {quote(value)}", field=field)
    return text


def boolean(value: Any, field: str) -> bool:
    """``value`` as a YAML boolean (``true``/``false``)."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"must be true or false, got {quote(value)}", field=field)
    return value
