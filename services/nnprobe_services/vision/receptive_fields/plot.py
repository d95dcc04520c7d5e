"""PNG pictures of receptive fields, rendered server-side with matplotlib's Agg backend (no pyplot)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nnprobe_services.errors import Cancelled
from nnprobe_services.vision.receptive_fields.boxes import UnitField

IMAGE_FIELD = "plot.image.encoded"
#: Units drawn (and named in the legend); the response still lists every unit asked for.
MAX_DRAWN_UNITS = 24
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
    should_stop: Callable[[], bool] | None = None,
) -> bytes:
    """The image (or a blank canvas) with each unit's field: the clipped box filled, the unclipped box
    dashed, the centre marked; the first ``MAX_DRAWN_UNITS`` units only, the legend says how many more.
    With ``gradient_map``, a second panel shows the effective field. ``should_stop`` is asked before
    drawing and before encoding; when it answers true, ``Cancelled`` is raised."""
    _check(should_stop)
    drawn, hidden = units[:MAX_DRAWN_UNITS], len(units) - MAX_DRAWN_UNITS
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
    bounds = _draw_units(ax, drawn, [lo, lo + w, lo, lo + h])
    margin = 0.03 * max(bounds[1] - bounds[0], bounds[3] - bounds[2])
    ax.set_xlim(bounds[0] - margin, bounds[1] + margin)
    ax.set_ylim(bounds[3] + margin, bounds[2] - margin)
    ax.set_aspect("equal")
    ax.set_xlabel("x (columns)")
    ax.set_ylabel("y (rows)")
    ax.set_title(title or "receptive fields (dashed: unclipped)")
    if hidden > 0:
        ax.plot([], [], linestyle="none", label=f"... {hidden} more units, not drawn")
    if units:
        ax.legend(loc="upper right", fontsize=8)
    if gradient_map is not None:
        _draw_effective(figure, panels, gradient_map, gradient_unit, extent)
    _check(should_stop)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _draw_units(ax: Any, units: Sequence[UnitField], bounds: list[float]) -> list[float]:
    """Each unit's boxes and centre on ``ax``; the bounds (x0, x1, y0, y1) grown to hold them."""
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
    return bounds


def _draw_effective(
    figure: Figure,
    panels: int,
    gradient_map: np.ndarray,
    gradient_unit: UnitField | None,
    extent: tuple[float, float, float, float],
) -> None:
    """The second panel: the effective field's gradient map, with the unit's theoretical box."""
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


#: Largest image (width x height) a picture is drawn on: as many pixels as the default tensor limit allows
#: for an RGB input (50 million values). Checked from the header, before decoding.
MAX_IMAGE_PIXELS = 50_000_000 // 3


def _check(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("stopped before drawing the picture")
