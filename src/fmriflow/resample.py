"""Bring preprocessed BOLD onto the atlas grid (MNI152NLin6Asym 2 mm, 91 x 109 x 91)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.image import resample_to_img

from .errors import InputError
from .io import atomic_path, open_nifti, save_nifti


def same_grid(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol: float = 1e-4) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol)


def to_atlas_grid(bold: str | Path, mask: str | Path, atlas: str | Path, out_bold: str | Path, out_mask: str | Path) -> dict:
    """Write BOLD and mask on the atlas grid; return what was done.

    When the grid already matches (fMRIPrep run with ``MNI152NLin6Asym:res-2``) the
    outputs are relative symlinks to the inputs: no copy, no resampling error, and the
    sidecar says so. Otherwise BOLD is resampled with continuous interpolation and the
    mask with nearest neighbour; the input must already be in the template space.
    """
    bold_img, mask_img, atlas_img = open_nifti(bold), open_nifti(mask), open_nifti(atlas)
    if bold_img.ndim != 4:
        raise InputError(bold, f"BOLD must be 4D, got shape {bold_img.shape}")
    if same_grid(bold_img, atlas_img):
        _link(bold, out_bold)
        _link(mask, out_mask)
        return {"resampled": False, "reason": "input already on the atlas grid"}
    if not _overlaps(bold_img, atlas_img):
        raise InputError(bold, "BOLD does not overlap the atlas field of view: is it in MNI152NLin6Asym space?")
    resampled = resample_to_img(bold_img, atlas_img, interpolation="continuous", force_resample=True, copy_header=True)
    data = np.asarray(resampled.dataobj, dtype=np.float32)
    out = nib.Nifti1Image(data, atlas_img.affine, resampled.header)
    out.header.set_data_dtype(np.float32)
    out.header.set_xyzt_units("mm", "sec")
    save_nifti(out, out_bold)
    mask_rs = resample_to_img(mask_img, atlas_img, interpolation="nearest", force_resample=True, copy_header=True)
    save_nifti(nib.Nifti1Image(np.asarray(mask_rs.dataobj).astype(np.uint8), atlas_img.affine), out_mask)
    return {
        "resampled": True,
        "reason": f"grid {bold_img.shape[:3]} with voxel size {bold_img.header.get_zooms()[:3]} differs from the atlas grid",
        "interpolation": {"bold": "continuous", "mask": "nearest"},
    }


def _link(src: str | Path, dst: str | Path) -> None:
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        os.symlink(os.path.relpath(Path(src).resolve(), dst.parent.resolve()), tmp)


def _overlaps(img: nib.spatialimages.SpatialImage, ref: nib.spatialimages.SpatialImage) -> bool:
    def bounds(i):
        corners = np.array([[x, y, z, 1] for x in (0, i.shape[0] - 1) for y in (0, i.shape[1] - 1) for z in (0, i.shape[2] - 1)])
        world = corners @ i.affine.T
        return world[:, :3].min(0), world[:, :3].max(0)

    (lo1, hi1), (lo2, hi2) = bounds(img), bounds(ref)
    return bool(np.all(lo1 < hi2) and np.all(lo2 < hi1))
