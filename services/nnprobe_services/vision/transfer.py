"""Transfer checks against other VisionService servers, service to service through the SDK."""

from __future__ import annotations

from nnprobe import NnprobeError, VisionClient

from nnprobe_services.vision.adversarial import AdversarialImage, Transfer, fooled, png
from nnprobe_services.vision.classify import ClassScore


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
