"""Bring preprocessed BOLD onto the atlas grid (MNI152NLin6Asym 2 mm, 91 x 109 x 91)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError
from .io import atomic_path, open_nifti, save_nifti
from .naming import TEMPLATE_SPACE, check_mni_space, space_of


def same_grid(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol: float = 1e-4) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol)


def to_atlas_grid(bold: str | Path, mask: str | Path, atlas: str | Path, out_bold: str | Path, out_mask: str | Path) -> dict:
    """Write BOLD and mask on the atlas grid; return what was done (for the sidecar).

    The BOLD must be in an MNI template space (its ``space-`` entity): another MNI
    template (e.g. MNI152NLin2009cAsym) is taken to share MNI152NLin6Asym's world
    coordinates, which the sidecar records (the templates differ by a few millimetres
    locally; no template-to-template warp is available offline). Any other space (T1w,
    fsnative, a missing entity) is an error, never a silent resample.

    Headers are checked first: a finite, invertible affine with orthogonal axes, qform and
    sform in agreement when both are set, mask and BOLD on one grid. When the grid already
    matches (fMRIPrep run with ``MNI152NLin6Asym:res-2``) the outputs are relative symlinks
    to the inputs; otherwise BOLD is resampled with 3rd-order spline interpolation and the
    mask with nearest neighbour (a change of orientation included).
    """
    space = check_mni_space(space_of(bold), bold)
    if space_of(mask) not in (None, space):
        raise InputError(mask, f"brain mask is in space {space_of(mask)!r}, the BOLD in {space!r}")
    bold_img, mask_img, atlas_img = open_nifti(bold), open_nifti(mask), open_nifti(atlas)
    if bold_img.ndim != 4:
        raise InputError(bold, f"BOLD must be 4D, got shape {bold_img.shape}")
    check_header(bold_img, bold)
    if not same_grid(mask_img, bold_img):
        raise InputError(mask, f"brain mask grid {mask_img.shape[:3]} differs from the BOLD grid {bold_img.shape[:3]}")
    info = {
        "SourceSpace": space,
        "Transform": "identity" if space == TEMPLATE_SPACE else (
            f"identity in MNI world coordinates: {space} taken as {TEMPLATE_SPACE} "
            "(the templates differ by a few mm locally; no template-to-template warp applied)"),
        "SourceOrientation": "".join(nib.aff2axcodes(bold_img.affine)),
        "SourceGrid": {"shape": list(bold_img.shape[:3]), "zooms_mm": [float(z) for z in bold_img.header.get_zooms()[:3]]},
    }
    if same_grid(bold_img, atlas_img):
        _link(bold, out_bold)
        _link(mask, out_mask)
        return {"resampled": False, "reason": "input already on the atlas grid", **info}
    if not _overlaps(bold_img, atlas_img):
        raise InputError(bold, f"BOLD does not overlap the atlas field of view: is it really in {space} space?")
    from nilearn.image import resample_to_img  # ~1 s to import: only when the grid differs (not the demo's)

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
        "reason": f"grid {bold_img.shape[:3]} with voxel size {bold_img.header.get_zooms()[:3]} and orientation "
                  f"{info['SourceOrientation']} differs from the atlas grid",
        "interpolation": {"bold": "continuous (3rd-order B-spline, nilearn resample_to_img)", "mask": "nearest"},
        **info,
    }


def check_header(img: nib.spatialimages.SpatialImage, path: str | Path, atol: float = 1e-3) -> None:
    """An InputError unless the affine is usable and qform and sform (when both set) agree."""
    affine = img.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(path, f"degenerate or non-finite affine:\n{affine}")
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.abs(axes.T @ axes - np.eye(3)).max() > 1e-3:
        raise InputError(path, "voxel axes are not orthogonal (sheared affine)")
    header = img.header
    if hasattr(header, "get_qform"):
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        if qcode and scode and not np.allclose(qform, sform, atol=atol):
            raise InputError(path, f"qform and sform disagree, so the orientation is ambiguous:\nqform\n{qform}\nsform\n{sform}")


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
