"""The geometry of a layer's receptive field along one axis, as ``ComputeReceptiveField`` returns it."""

from __future__ import annotations

from dataclasses import dataclass

from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result


@rich_result()
@dataclass
class AxisField:
    """Geometry of a layer along one axis, in input pixels (``AxisField`` of the proto says each field)."""

    size: int
    jump: int
    receptive_size: int
    start: float
    effective_padding: float
    #: The exact jump (numerator, denominator): (1, 2) after an upsampling by 2; ``jump`` is 0 when not whole.
    jump_fraction: tuple[int, int] = (0, 1)
    #: Whether the units' fields differ by position (each unit's box is then its own).
    varies: bool = False
    #: The smallest and largest unit's field, in input pixels.
    receptive_min: int = 0
    receptive_max: int = 0
    #: After how many units the fields repeat (1: uniform; 0: they do not repeat).
    period: int = 1


def axis_field(message: pb.AxisField) -> AxisField:
    """The ``AxisField`` of a response's message."""
    return AxisField(
        message.size, message.jump, message.receptive_size, message.start, message.effective_padding,
        (message.jump_numerator, message.jump_denominator or 1), message.varies,
        message.receptive_min, message.receptive_max, message.period,
    )  # fmt: skip
