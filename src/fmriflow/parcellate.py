"""Region time series from a label atlas: exact means (or medians) over in-mask voxels.

Equal to nilearn's ``NiftiLabelsMasker`` on the same image and mask, without its
per-call overhead: the BOLD array is read once and reduced with one sorted gather and
``np.add.reduceat`` in float64. Regions whose in-mask coverage falls below
``min_coverage`` (or that have no voxels) stay in the output as NaN columns, so the
table always has one column per atlas label, in label order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .errors import InputError
from .io import load_nifti

STRATEGIES = ("mean", "median")


@dataclass
class Parcellation:
    timeseries: pd.DataFrame  # time x region, header = region names
    coverage: pd.DataFrame  # one row per region: index, name, n_voxels, n_voxels_in_mask, coverage, used

    @property
    def dropped(self) -> list[str]:
        return self.coverage.loc[~self.coverage["used"], "name"].tolist()


def parcellate(
    bold: str | Path | nib.Nifti1Image,
    labels_img: str | Path | nib.Nifti1Image,
    labels: pd.DataFrame,
    mask_img: str | Path | nib.Nifti1Image | None = None,
    *,
    strategy: str = "mean",
    min_coverage: float = 0.5,
) -> Parcellation:
    """Reduce a 4D BOLD image to one time series per atlas region.

    ``labels`` is the atlas look-up table (columns ``index`` and ``name``); the atlas
    and mask must be on the BOLD grid (the resample step guarantees it).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"'strategy' must be one of {STRATEGIES}; {strategy!r} was provided")
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"'min_coverage' must be within [0, 1]; {min_coverage!r} was provided")
    bold_img, atlas = _load(bold), _load(labels_img)
    if bold_img.ndim != 4:
        raise InputError(_name(bold), f"BOLD must be 4D, got shape {bold_img.shape}")
    if bold_img.shape[:3] != atlas.shape[:3] or not np.allclose(bold_img.affine, atlas.affine, atol=1e-4):
        raise InputError(_name(labels_img), f"atlas grid {atlas.shape[:3]} differs from the BOLD grid {bold_img.shape[:3]}; resample first")
    label_data = np.asarray(atlas.dataobj)
    label_vol = np.rint(label_data).astype(np.int64).ravel(order="F")
    in_mask = np.ones(label_vol.shape, bool)
    if mask_img is not None:
        mask = _load(mask_img)
        if mask.shape[:3] != atlas.shape[:3]:
            raise InputError(_name(mask_img), f"mask grid {mask.shape[:3]} differs from the BOLD grid {bold_img.shape[:3]}")
        in_mask = np.asarray(mask.dataobj).ravel(order="F") > 0

    index = labels["index"].to_numpy(dtype=np.int64)
    position = np.full(max(int(index.max()), int(label_vol.max())) + 1, -1, dtype=np.int64)
    position[index] = np.arange(index.size)
    region = np.where(label_vol > 0, position[label_vol], -1)
    n_total = np.bincount(region[region >= 0], minlength=index.size)
    selected = np.flatnonzero((region >= 0) & in_mask)
    n_in = np.bincount(region[selected], minlength=index.size)
    coverage = np.divide(n_in, n_total, out=np.zeros(index.size), where=n_total > 0)
    used = (n_in > 0) & (coverage >= min_coverage)

    # Gather the voxels of the used regions, sorted by region, then reduce per region.
    selected = selected[used[region[selected]]]
    order = np.argsort(region[selected], kind="stable")
    selected, owner = selected[order], region[selected][order]
    n_t = bold_img.shape[3]
    data = np.asanyarray(bold_img.dataobj).reshape(-1, n_t, order="F")
    voxels = np.asarray(data[selected], dtype=np.float64)  # (n_voxels, T)
    if not np.isfinite(voxels).all():
        raise InputError(_name(bold), "BOLD contains NaN or infinite values inside atlas regions")
    values = np.full((n_t, index.size), np.nan)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if owner.size else np.array([], int)
    regions_used = owner[starts]
    if strategy == "mean":
        values[:, regions_used] = (np.add.reduceat(voxels, starts, axis=0) / n_in[regions_used, None]).T
    else:
        for start, stop, r in zip(starts, np.r_[starts[1:], owner.size], regions_used):
            values[:, r] = np.median(voxels[start:stop], axis=0)

    names = labels["name"].astype(str).tolist()
    cov = pd.DataFrame({
        "index": index, "name": names, "n_voxels": n_total, "n_voxels_in_mask": n_in,
        "coverage": coverage, "used": used,
    })
    return Parcellation(pd.DataFrame(values, columns=names), cov)


def _load(img):
    return img if isinstance(img, nib.spatialimages.SpatialImage) else load_nifti(img)


def _name(img) -> str | None:
    return None if isinstance(img, nib.spatialimages.SpatialImage) else str(img)
