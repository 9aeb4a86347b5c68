"""NeuroSTORM's input recipe on a run of MNI-resampled BOLD (the card's ``input`` and ``scaling``).

In the authors' order (CUHK-AIM-Group/NeuroSTORM, datasets/preprocessing_volume.py, then its
dataset loader):

1. ``resample_time``: the run to the card's TR (0.8 s) by linear interpolation along time with
   half-sample alignment (``torch.nn.functional.interpolate``, ``align_corners=False``),
   ``round(T * TR / target)`` frames;
2. ``znorm``: background is every value outside the brain mask or equal to 0; background and
   negative values are set to 0; one mean and one population standard deviation over every brain
   value of every frame; brain values z-scored, background set to the smallest z-score;
3. ``crop_pad``: each axis centred-cropped to the card's grid where longer (start ``(n - m) // 2``),
   padded where shorter, ``ceil(pad / 2)`` before and ``floor(pad / 2)`` after, with the frame's
   first voxel value (91 -> 96: 3 + 2).

Windows are ``window`` frames ``frame_step`` apart, a window every ``stride`` frames from the
run's first, as the model takes them: (frames, X, Y, Z).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError

RESAMPLING = ("linear along time, half-sample aligned (torch interpolate, align_corners=False), round(T * TR / "
              "target) frames, before the z-score and the crop")


def resample_time(data: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """(X, Y, Z, T) -> (X, Y, Z, round(T * tr / target_tr)), linear, half-sample aligned."""
    n_in = data.shape[-1]
    n_out = int(round(n_in * tr / target_tr))
    if n_out == n_in:
        return data.astype(np.float64)
    scale = n_in / n_out
    source = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    left = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    weight = source - left
    return data[..., left] * (1.0 - weight) + data[..., right] * weight


def znorm(data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """(X, Y, Z, T) z-scored over its brain values (``mask`` and non-zero); the statistics."""
    brain = mask[..., None] & (data != 0)
    if not brain.any():
        raise ValueError("no brain voxel: every value inside the mask is 0")
    x = np.where(brain, np.maximum(data, 0.0), 0.0)
    values = x[brain]
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    if not std > 0:
        raise ValueError("the BOLD values inside the brain mask are constant")
    z = (x - mean) / std
    background = float(z[brain].min())
    return np.where(brain, z, background), {"mean": mean, "std": std, "background": background,
                                            "brain_values": int(brain.sum())}


def crop_pad(volumes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(X, Y, Z, T) onto ``shape`` (X', Y', Z') per axis, as the module docstring says."""
    out = volumes
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if n > m:
            out = np.take(out, np.arange((n - m) // 2, (n - m) // 2 + m), axis=axis)
        elif n < m:
            before, after = math.ceil((m - n) / 2), (m - n) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, after)
            padded = np.pad(out, widths)  # zeros, then the first voxel's value of each frame
            region = [slice(None)] * out.ndim
            region[axis] = slice(before, before + n)
            fill = np.broadcast_to(volumes[0, 0, 0, :], padded.shape).copy()
            fill[tuple(region)] = out
            out = fill
    return out


def prepare_run(data: np.ndarray, mask: np.ndarray, tr: float, card: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """A run (X, Y, Z, T) and its mask as the card prepares them: frames (T', X', Y', Z') float32, and what was done."""
    target = card["input"]["tr"]["target_tr"]
    resampled = resample_time(np.asarray(data, dtype=np.float64), tr, target)
    z, stats = znorm(resampled, np.asarray(mask, dtype=bool))
    frames = crop_pad(z, card["atlas"]["grid"]["shape"])
    return np.moveaxis(frames, -1, 0).astype(np.float32), {"tr": tr, "target_tr": target,
                                                           "n_frames": int(resampled.shape[-1]), **stats}


def window_starts(n_frames: int, window: int, stride: int, frame_step: int = 1) -> list[int]:
    """First frames of the windows a run of ``n_frames`` holds."""
    span = (window - 1) * frame_step + 1
    return list(range(0, n_frames - span + 1, stride))


def check_grid(card: Mapping[str, Any], card_path: str) -> None:
    grid = card["atlas"].get("grid") or {}
    if len(grid.get("shape") or []) != 3:
        raise InputError(card_path, f"atlas.grid.shape must be 3 voxel counts for a voxel recipe; {grid.get('shape')!r}")
