"""Transfer checks against other VisionService servers: which addresses are acceptable, how long one remote
call may take, and what its answer means. The call itself is made by the servicer (on the event loop)."""

from __future__ import annotations

import re

from nnprobe_services.vision.adversarial import Transfer, fooled
from nnprobe_services.vision.classify import ClassScore

#: Most transfer models and addresses one request may name.
MAX_TARGETS = 8
#: Longest wait for one remote server's answer, within the request's own deadline.
REMOTE_TIMEOUT_SECONDS = 30.0
_ADDRESS = re.compile(r"[A-Za-z0-9._:/\[\]%-]+")


def address_problem(address: str) -> str:
    """Why ``address`` cannot be a server address (empty when it can)."""
    if not address:
        return "is empty"
    if len(address) > 255:
        return f"is {len(address)} characters long; an address has at most 255"
    if not _ADDRESS.fullmatch(address):
        return f"{address[:64]!r} is not a host:port address"
    return ""


def call_timeout(remaining: float | None) -> float:
    """The deadline of one remote call: what is left of the request's, at most REMOTE_TIMEOUT_SECONDS."""
    return REMOTE_TIMEOUT_SECONDS if remaining is None else min(remaining, REMOTE_TIMEOUT_SECONDS)


def remote_outcome(
    address: str, model: str, best: ClassScore | None, goal_class: int, targeted: bool, error: str = ""
) -> Transfer:
    """The transfer result of the server at ``address``: its model's top class ``best`` (None with an
    ``error``) fools it when it is the goal class (targeted) or differs from it (untargeted)."""
    if best is None:
        return Transfer("", address, None, False, error)
    return Transfer(model, address, best, fooled(best.index, goal_class, targeted))
