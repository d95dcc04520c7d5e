"""Transfer checks against other VisionService servers, service to service through the SDK."""

from __future__ import annotations

import re

from nnprobe import NnprobeError, VisionClient

from nnprobe_services.vision.adversarial import AdversarialImage, Transfer, fooled, png
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


def remote_transfer(
    address: str, result: AdversarialImage, targeted: bool, *, token: str | None, timeout: float | None
) -> Transfer:
    """Classify the 8-bit adversarial image on the server at ``address`` (its default model, no resize)."""
    try:
        with VisionClient(address, timeout=timeout, token=token) as client:
            answer = client.classify(png(result.adversarial), skip_resize=True, top_k=1)
    except (NnprobeError, ValueError) as error:
        return Transfer("", address, None, False, str(error))
    best = answer[0].top[0]
    score = ClassScore(best.index, best.label, best.probability)
    return Transfer(answer.model, address, score, fooled(best.index, result.goal_class, targeted))
