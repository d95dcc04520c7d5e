"""Token sequences: a patch embedding merges the image's (height, width) axes into one token axis, row-major,
and a vision transformer works on that sequence (``(N, tokens, features)``). ``Tokens`` says which axis holds
the patch grid and where: ``offset`` tokens without a position first (a class token, a distillation token),
then the ``rows x columns`` patches row-major, then any others. The functions below follow that axis through
reshapes, from an image map into tokens and back; shapes are the nodes' own (batch 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tokens:
    """Axis ``axis`` holds ``length`` tokens: ``offset`` without a position, then the patch grid row-major.
    The patch at (row ``y``, column ``x``) is token ``offset + y * columns + x``."""

    axis: int
    rows: int
    columns: int
    offset: int
    length: int

    @property
    def grid(self) -> int:
        """How many tokens have a (row, column): rows * columns."""
        return self.rows * self.columns

    def moved(self, axis: int) -> Tokens:
        return Tokens(axis, self.rows, self.columns, self.offset, self.length)


def _axis_at(before: Sequence[int], axis: int, after: Sequence[int], size: int) -> int | None:
    """The axis of ``after`` of ``size`` elements that starts where axis ``axis`` of ``before`` starts (the
    same number of elements before it, row-major), or None."""
    prefix = math.prod(before[:axis])
    found = [k for k in range(len(after)) if after[k] == size and math.prod(after[:k]) == prefix]
    return found[0] if found else None


def merged(before: Sequence[int], after: Sequence[int], layout: tuple[int, int]) -> Tokens | None:
    """The token axis a reshape makes of an image map whose adjacent (height, width) axes ``layout`` merge
    into one (``flatten(2)``), or None when the reshape does something else."""
    h, w = layout
    if w != h + 1:
        return None
    rows, columns = before[h], before[w]
    k = _axis_at(before, h, after, rows * columns)
    return None if k is None else Tokens(k, rows, columns, 0, rows * columns)


def moved(before: Sequence[int], after: Sequence[int], tokens: Tokens) -> Tokens | None:
    """The token axis after a reshape that keeps it whole (``unsqueeze``, splitting the features into
    heads), or None."""
    k = _axis_at(before, tokens.axis, after, tokens.length)
    return None if k is None else tokens.moved(k)


def unmerged(before: Sequence[int], after: Sequence[int], tokens: Tokens) -> tuple[int, int] | None:
    """The (height, width) axes when a reshape splits a sequence of patches only back into rows and
    columns (``reshape(N, H, W, C)``), or None."""
    if tokens.offset or tokens.length != tokens.grid:
        return None
    k = _axis_at(before, tokens.axis, after, tokens.rows)
    if k is None or k + 1 >= len(after) or after[k + 1] != tokens.columns:
        return None
    return k, k + 1


def window_split(before: Sequence[int], after: Sequence[int], layout: tuple[int, int]) -> int | None:
    """The window size when a reshape splits an image axis into (windows, positions in a window), as a
    window partition does (Swin's ``view(N, H / w, w, W / w, w, C)``), or None."""
    for axis in layout:
        k = _axis_at(before, axis, after, before[axis])
        if k is not None:
            continue
        prefix = math.prod(before[:axis])
        for j in range(len(after) - 1):
            pair = after[j] * after[j + 1]
            if pair == before[axis] and 1 < after[j] < pair and math.prod(after[:j]) == prefix:
                return after[j + 1]
    return None
