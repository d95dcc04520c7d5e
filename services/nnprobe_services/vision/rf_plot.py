"""PNG pictures of receptive fields, rendered server-side with matplotlib's Agg backend (no pyplot)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nnprobe_services.vision.receptive_field import UnitField

COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999"]


def render(
    input_size: tuple[int, int],
    origin: float,
    units: Sequence[UnitField],
    *,
    image: np.ndarray | None = None,
    gradient_map: np.ndarray | None = None,
    gradient_unit: UnitField | None = None,
    title: str = "",
) -> bytes:
    """The image (or a blank canvas) with each unit's field: the clipped box filled, the unclipped box
    dashed, the centre marked. With ``gradient_map``, a second panel shows the effective field."""
    h, w = input_size
    panels = 2 if gradient_map is not None else 1
    figure = Figure(figsize=(6 * panels, 6), dpi=100)
    FigureCanvasAgg(figure)
    lo = origin - 0.5
    extent = (lo, lo + w, lo + h, lo)
    ax = figure.add_subplot(1, panels, 1)
    if image is not None:
        ax.imshow(image, extent=extent, interpolation="nearest", cmap="gray" if image.ndim == 2 else None)
    else:
        ax.add_patch(Rectangle((lo, lo), w, h, facecolor="#f0f0f0", edgecolor="black", linewidth=1))
    bounds = [lo, lo + w, lo, lo + h]
    for index, unit in enumerate(units):
        color = COLORS[index % len(COLORS)]
        v, hz = unit.vertical, unit.horizontal
        vc, hc = unit.vertical_clipped, unit.horizontal_clipped
        ax.add_patch(
            Rectangle(
                (float(hz.start), float(v.start)),
                float(hz.end - hz.start),
                float(v.end - v.start),
                fill=False,
                linestyle="--",
                edgecolor=color,
                linewidth=1.2,
            )
        )
        ax.add_patch(
            Rectangle(
                (float(hc.start), float(vc.start)),
                float(hc.end - hc.start),
                float(vc.end - vc.start),
                facecolor=color,
                alpha=0.18,
                edgecolor=color,
                linewidth=2,
                label=f"{unit.layer} ({unit.x}, {unit.y}): {v.end - v.start} x {hz.end - hz.start}",
            )
        )
        ax.plot([float(hz.center)], [float(v.center)], marker="+", markersize=14, color=color, mew=2)
        bounds = [
            min(bounds[0], float(hz.start)),
            max(bounds[1], float(hz.end)),
            min(bounds[2], float(v.start)),
            max(bounds[3], float(v.end)),
        ]
    margin = 0.03 * max(bounds[1] - bounds[0], bounds[3] - bounds[2])
    ax.set_xlim(bounds[0] - margin, bounds[1] + margin)
    ax.set_ylim(bounds[3] + margin, bounds[2] - margin)
    ax.set_aspect("equal")
    ax.set_xlabel("x (columns)")
    ax.set_ylabel("y (rows)")
    ax.set_title(title or "receptive fields (dashed: unclipped)")
    if units:
        ax.legend(loc="upper right", fontsize=8)
    if gradient_map is not None:
        erf = figure.add_subplot(1, panels, 2)
        shown = erf.imshow(gradient_map, extent=extent, cmap="magma", interpolation="nearest")
        figure.colorbar(shown, ax=erf, fraction=0.046, pad=0.04, label="mean |dy/dx|")
        if gradient_unit is not None:
            vc, hc = gradient_unit.vertical_clipped, gradient_unit.horizontal_clipped
            erf.add_patch(
                Rectangle(
                    (float(hc.start), float(vc.start)),
                    float(hc.end - hc.start),
                    float(vc.end - vc.start),
                    fill=False,
                    edgecolor="cyan",
                    linewidth=1.5,
                )
            )
        erf.set_title("effective receptive field (box: theoretical)")
        erf.set_xlabel("x (columns)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes to an (H, W, 3) uint8 array; ``ValueError`` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            return np.asarray(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode the image: {error}") from None


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) uint8 or float image to ``size`` (H, W) for display."""
    from PIL import Image

    if image.shape[:2] == size:
        return image
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    squeezed = image[..., 0] if image.shape[-1] == 1 else image
    return np.asarray(Image.fromarray(squeezed).resize((size[1], size[0]), Image.Resampling.BILINEAR))
