"""4-D (x, y, z, t) windows over channels-last token grids ``(B, D, H, W, T, C)``.

Swin-style helpers for NeuroSTORM: clip a window to the grid, pad the grid to whole windows,
cut it into windows (tokens of a window in (d, h, w, t) order, time fastest) and put them
back, and shift the grid cyclically by half a window between blocks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Size4 = tuple[int, int, int, int]


def effective_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Size4, Size4]:
    """Window and shift for a grid: an axis no longer than its window is one window, unshifted."""
    sizes, shifts = list(window), list(shift)
    for axis, n in enumerate(grid):
        if n <= window[axis]:
            sizes[axis], shifts[axis] = n, 0
    return tuple(sizes), tuple(shifts)


def pad_to_windows(x: Tensor, window: Sequence[int]) -> Tensor:
    """Zero-pad ``(B, D, H, W, T, C)`` at the end of each grid axis to a multiple of the window."""
    pads = [(-n) % w for n, w in zip(x.shape[1:5], window)]
    if not any(pads):
        return x
    # F.pad lists the last dimension first: C, then T, W, H, D
    return F.pad(x, (0, 0, 0, pads[3], 0, pads[2], 0, pads[1], 0, pads[0]))


def partition(x: Tensor, window: Sequence[int]) -> Tensor:
    """``(B, D, H, W, T, C)`` (dims multiples of ``window``) -> ``(B * n_windows, prod(window), C)``."""
    B, D, H, W, T, C = x.shape
    wd, wh, ww, wt = window
    x = x.view(B, D // wd, wd, H // wh, wh, W // ww, ww, T // wt, wt, C)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8, 9)  # (B, nD, nH, nW, nT, wd, wh, ww, wt, C)
    return x.reshape(-1, wd * wh * ww * wt, C)


def unpartition(windows: Tensor, window: Sequence[int], grid: Sequence[int]) -> Tensor:
    """Inverse of ``partition``: ``(B * n_windows, prod(window), C)`` -> ``(B, D, H, W, T, C)``."""
    D, H, W, T = grid
    wd, wh, ww, wt = window
    C = windows.shape[-1]
    x = windows.view(-1, D // wd, H // wh, W // ww, T // wt, wd, wh, ww, wt, C)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8, 9)  # (B, nD, wd, nH, wh, nW, ww, nT, wt, C)
    return x.reshape(-1, D, H, W, T, C)


def roll(x: Tensor, shift: Sequence[int], inverse: bool = False) -> Tensor:
    """Cyclic shift of the grid axes by ``-shift`` (``+shift`` with ``inverse``)."""
    if not any(shift):
        return x
    sign = 1 if inverse else -1
    return torch.roll(x, shifts=tuple(sign * s for s in shift), dims=(1, 2, 3, 4))


def n_windows(grid: Sequence[int], window: Sequence[int]) -> int:
    """Windows covering a grid (the last one per axis may be partial)."""
    return math.prod(math.ceil(n / w) for n, w in zip(grid, window))
