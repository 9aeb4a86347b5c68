"""NeuroSTORM's input recipe on a run of MNI-resampled BOLD (the card's ``input`` and ``scaling``).

In the authors' order (CUHK-AIM-Group/NeuroSTORM, datasets/preprocessing_volume.py, then its
dataset loader):

1. ``resample_weights``: the run to the card's TR (0.8 s) by linear interpolation along time with
   half-sample alignment (``torch.nn.functional.interpolate``, ``align_corners=False``),
   ``round(T * TR / target)`` frames;
2. ``znorm_stats``: background is every value outside the brain mask or equal to 0; background and
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


def resample_weights(n_in: int, tr: float, target_tr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output frame j = (1 - w[j]) * input[left[j]] + w[j] * input[right[j]]: linear interpolation along
    time at half-sample alignment, ``round(n_in * tr / target_tr)`` output frames."""
    n_out = int(round(n_in * tr / target_tr))
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    left = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    return left, np.minimum(left + 1, n_in - 1), source - left


class _Run:
    """A run (X, Y, Z, T) served one resampled frame at a time (float64), so that only the run itself and a
    frame or two are in memory."""

    def __init__(self, data: np.ndarray, mask: np.ndarray, tr: float, target_tr: float):
        self.data, self.mask = data, mask
        self.left, self.right, self.weight = resample_weights(data.shape[-1], tr, target_tr)

    def __len__(self) -> int:
        return len(self.left)

    def frame(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Resampled frame ``j`` with background and negative values at 0, and its brain (mask and non-zero)."""
        w = self.weight[j]
        x = self.data[..., self.left[j]].astype(np.float64) * (1.0 - w) + self.data[..., self.right[j]] * w
        brain = self.mask & (x != 0)
        return np.where(brain, np.maximum(x, 0.0), 0.0), brain


def znorm_stats(run: _Run) -> dict[str, float]:
    """Mean, population SD (two passes, float64) and the smallest z-score of the run's brain values."""
    total, count = 0.0, 0
    for j in range(len(run)):
        x, brain = run.frame(j)
        total, count = total + float(x[brain].sum()), count + int(brain.sum())
    if not count:
        raise ValueError("no brain voxel: every value inside the mask is 0")
    mean, squares, lowest = total / count, 0.0, np.inf
    for j in range(len(run)):
        x, brain = run.frame(j)
        squares += float(np.square(x[brain] - mean).sum())
        lowest = min(lowest, float(x[brain].min())) if brain.any() else lowest
    std = float(np.sqrt(squares / count))
    if not std > 0:
        raise ValueError("the BOLD values inside the brain mask are constant")
    return {"mean": mean, "std": std, "background": (lowest - mean) / std, "brain_values": count}


def crop_pad(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """One frame (X, Y, Z) onto ``shape`` per axis, as the module docstring says."""
    out = volume
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if n > m:
            out = np.take(out, np.arange((n - m) // 2, (n - m) // 2 + m), axis=axis)
        elif n < m:
            widths = [(0, 0)] * out.ndim
            widths[axis] = (math.ceil((m - n) / 2), (m - n) // 2)
            out = np.pad(out, widths, constant_values=volume.flat[0])
    return out


def prepare_run(data: np.ndarray, mask: np.ndarray, tr: float, card: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """A run (X, Y, Z, T) and its mask as the card prepares them: frames (T', X', Y', Z') float32, and what was done."""
    target, shape = card["input"]["tr"]["target_tr"], tuple(card["atlas"]["grid"]["shape"])
    run = _Run(data, np.asarray(mask, dtype=bool), tr, target)
    stats = znorm_stats(run)
    frames = np.empty((len(run), *shape), dtype=np.float32)
    for j in range(len(run)):
        x, brain = run.frame(j)
        frames[j] = crop_pad(np.where(brain, (x - stats["mean"]) / stats["std"], stats["background"]), shape)
    return frames, {"tr": tr, "target_tr": target, "n_frames": len(run), **stats}


def window_starts(n_frames: int, window: int, stride: int, frame_step: int = 1) -> list[int]:
    """First frames of the windows a run of ``n_frames`` holds."""
    span = (window - 1) * frame_step + 1
    return list(range(0, n_frames - span + 1, stride))


def check_grid(card: Mapping[str, Any], card_path: str) -> None:
    grid = card["atlas"].get("grid") or {}
    if len(grid.get("shape") or []) != 3:
        raise InputError(card_path, f"atlas.grid.shape must be 3 voxel counts for a voxel recipe; "
                                    f"{grid.get('shape')!r} was found")


def denoised_times(onset: np.ndarray, duration: np.ndarray, tr: float, output_volumes,
                   n_volumes: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows timed from raw volume 0 of the preprocessed BOLD (``onset``, ``duration`` in s, volumes
    ``tr`` s apart) on the denoised series' clock, which the dataset's windows count from: the denoised
    series keeps only ``output_volumes`` (its sidecar's ``OutputVolumes``: "all", or raw-volume indices;
    dummy and censored volumes dropped). A time maps to the number of kept volumes before it, times ``tr``."""
    kept = np.arange(n_volumes) if output_volumes == "all" else np.asarray(output_volumes, dtype=np.int64)
    raw = kept * tr + 1e-6  # raw times, plus a margin: a volume at a window's onset is not before it
    start = np.searchsorted(raw, np.asarray(onset, float), side="left") * tr
    end = np.searchsorted(raw, np.asarray(onset, float) + np.asarray(duration, float), side="left") * tr
    return start, end - start
