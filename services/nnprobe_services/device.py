"""Choose the torch device from the ``device`` setting."""

from __future__ import annotations

import torch


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA where there is none is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device
