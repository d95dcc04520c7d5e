"""How a client method hands its arguments to the request builder it shares with its asyncio twin.

The sync clients (``nnprobe.VisionClient`` ...) and the asyncio clients (``nnprobe.aio``) differ only in
how they wait for an answer: each method builds its request with one module-level function of its feature
module (``classify_request``) and reads the answer with another (``classify_result``), and both clients call
those same two functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The parameters of a client method that are not request fields.
CALL_ONLY = frozenset({"self", "timeout", "on_progress", "progress"})


def request_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """A method's ``locals()`` (taken first thing in its body) without ``self``, ``timeout`` and
    ``on_progress``: the keyword arguments of its request builder."""
    return {name: value for name, value in values.items() if name not in CALL_ONLY}
