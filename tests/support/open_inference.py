"""An Open Inference Protocol core without models and a model signature, for the protocol's unit tests."""

from __future__ import annotations

from nnprobe_services.vision.open_inference import protocol as oip


class _NoStore:
    """A model store that serves no built-in model."""

    def is_builtin(self, name):
        return False


def core() -> oip.OpenInference:
    """An Open Inference core with no built-in models, batches of at most 4, default model ``m``."""
    return oip.OpenInference(_NoStore(), None, max_batch_size=4, default_model="m")  # type: ignore[arg-type]


#: A model with the three image inputs (pixels, image, image_bytes) and logits/probabilities outputs.
SIGNATURE = oip.Signature(
    "m",
    ("1",),
    "",
    "",
    (
        oip.TensorSpec("pixels", "FP32", (-1, 3, 2, 2), True),
        oip.TensorSpec("image", "UINT8", (-1, -1, -1, 3), True),
        oip.TensorSpec("image_bytes", "BYTES", (-1, 1), True),
    ),
    (oip.TensorSpec("logits", "FP32", (-1, 3)), oip.TensorSpec("probabilities", "FP32", (-1, 3))),
    4,
    2,
    2,
    3,
    (),
)
