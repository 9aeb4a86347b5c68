"""``preproc.mode: lite``: a minimal, documented preprocessing from pip-installable tools.

For machines with no container runtime (so no fMRIPrep). It is NOT fMRIPrep: there is no
slice-timing or susceptibility-distortion correction, no T1w segmentation or surface work,
and the BOLD is registered straight to the template. Every output says so in its sidecar
(``"Preprocessing": "fmriflow lite"``).

Per run:

1. Non-steady-state volumes: the leading global-signal outliers
   (:func:`fmriflow.confounds.non_steady_state_volumes`).
2. Reference volume: voxel-wise median of the steady-state volumes.
3. Head-motion correction: each volume registered rigidly to the reference with ANTs
   (mean squares, two resolution levels). The six parameters (``trans_x`` ... ``rot_z``,
   mm and radians) describe the transform from the reference to the volume in
   :func:`fmriflow.confounds.rigid_matrix`'s convention, about the centre of the field of
   view; their origin is the reference, so they are relative motion, as MCFLIRT's are.
4. ``boldref``: mean of the motion-corrected steady-state volumes.
5. Registration of boldref to nilearn's MNI152 template (ICBM 2009a symmetric T1, shipped
   with nilearn, offline) with ANTs: ``Rigid``, ``Affine`` (default) or ``SyN``, Mattes
   mutual information (EPI and T1 contrasts differ).
6. Each raw volume resampled once (linear) onto the atlas grid through its motion
   transform and the registration.
7. Brain mask: nilearn's MNI152 brain mask on that grid, within the BOLD's field of view.
8. Confounds as fMRIPrep names them (:mod:`fmriflow.confounds`), from the output BOLD:
   global signal in the mask; white matter (template WM probability > 0.9, eroded) and CSF
   (inside the eroded brain mask, WM + GM probability < 0.2) means; their expansions;
   DVARS; FD (Power); 5 aCompCor components from each of the CSF and WM masks (JSON
   ``Mask``: ``CSF`` / ``WM``), after the 128 s DCT high-pass, steady-state volumes only;
   cosines; ``non_steady_state_outlier_NN``; ``motion_outlier_NN`` (FD > 0.5 mm or
   standardised DVARS > 1.5).

The files are named ``space-MNI152NLin2009aSym_res-2`` (the template registered to) and lie
on the atlas grid; the resample step records that MNI152NLin2009aSym is taken as
MNI152NLin6Asym's world space (the two differ by a few millimetres; no template-to-template
warp is available offline).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..confounds import (
    MOTION_COLUMNS, compcor, dct_highpass_basis, dvars, expansions, framewise_displacement, non_steady_state_volumes,
    one_hot_columns, rigid_parameters,
)
from ..errors import InputError
from ..naming import derivative
from ..progress import progress
from .derivatives import PreprocFiles

SPACE, RES = "MNI152NLin2009aSym", "2"
TRANSFORMS = ("Rigid", "Affine", "SyN")
N_COMPCOR = 5
FD_OUTLIER_MM, STD_DVARS_OUTLIER = 0.5, 1.5
HIGH_PASS_CUTOFF_S = 128.0
DESCRIPTION = ("fmriflow lite preprocessing, not fMRIPrep: non-steady-state detection, ANTs rigid head-motion "
               "correction, ANTs registration of the mean BOLD to nilearn's MNI152 2009a template, one linear "
               "resampling onto the atlas grid; no slice-timing or distortion correction, no T1w processing")
_LPS = np.diag([-1.0, -1.0, 1.0])  # ITK/ANTs physical space is LPS, NIfTI world space RAS


def expected_files(output_dir: str | Path, run: str) -> PreprocFiles:
    """The fMRIPrep-shaped files the lite rule writes for ``run``."""
    root = Path(output_dir)
    return PreprocFiles(
        bold=root / derivative(run, space=SPACE, res=RES, desc="preproc", suffix="bold", extension=".nii.gz"),
        mask=root / derivative(run, space=SPACE, res=RES, desc="brain", suffix="mask", extension=".nii.gz"),
        confounds=root / derivative(run, desc="confounds", suffix="timeseries", extension=".tsv"),
    )


def boldref_path(files: PreprocFiles) -> Path:
    return files.bold.with_name(files.bold.name.replace("_desc-preproc_bold", "_boldref"))


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image of a 3D array on a NIfTI grid (RAS affine -> LPS origin and direction)."""
    import ants

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=tuple(_LPS @ affine[:3, 3]),
                           spacing=tuple(spacing), direction=_LPS @ affine[:3, :3] / spacing)


def ras_matrix(transform) -> np.ndarray:
    """4 x 4 RAS world matrix of an ANTs affine transform (maps fixed-image points to moving-image points)."""
    params = np.asarray(transform.parameters, dtype=float)
    center = np.asarray(transform.fixed_parameters, dtype=float)
    linear, translation = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = translation + center - linear @ center
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def preprocess_run(raw_bold: str | Path, grid_img: str | Path, out: PreprocFiles, *, transform: str, seed: int,
                   threads: int) -> dict:
    """Run the steps of the module docstring on one raw BOLD run; write BOLD, mask, confounds, boldref.

    Returns the numbers for the sidecars (volumes, non-steady-state count, registration).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"'transform' must be one of {TRANSFORMS}; {transform!r} was provided")
    # ITK reads its thread count when a filter starts: one job's share, and reproducible
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    # antsRegistration seeds its metric sampling from the clock when --random-seed is 0, so
    # seed 0 gave a different result on every run: ANTs gets seed + 1, never 0
    ants_seed = seed + 1
    import ants
    from nilearn.datasets import load_mni152_template

    from ..io import load_nifti

    img = load_nifti(raw_bold)
    if img.ndim != 4 or img.shape[3] < 10:
        raise InputError(raw_bold, f"BOLD must be 4D with at least 10 volumes, got shape {img.shape}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine, tr = img.affine, float(img.header.get_zooms()[3])
    n_volumes = data.shape[3]
    mean_img = data.mean(axis=3)
    head = mean_img > 0.2 * np.percentile(mean_img, 98)
    n_dummy = non_steady_state_volumes(data[head].mean(axis=0))
    reference = np.median(data[..., n_dummy:], axis=3)
    center = affine[:3, :3] @ ((np.array(data.shape[:3]) - 1) / 2.0) + affine[:3, 3]
    fixed = to_ants(reference, affine)
    grid = nib.load(grid_img)
    grid_ants = to_ants(np.zeros(grid.shape[:3], np.float32), grid.affine)

    with tempfile.TemporaryDirectory(prefix="fmriflow-lite-") as tmp:
        motion_files, params, boldref = _head_motion(data, affine, fixed, center, n_dummy, ants_seed, tmp)
        template = load_mni152_template(resolution=2)
        to_template = ants.registration(to_ants(np.asarray(template.dataobj), template.affine), to_ants(boldref, affine),
                                        type_of_transform=transform, random_seed=ants_seed, outprefix=f"{tmp}/tpl_")
        bold = np.empty((*grid.shape[:3], n_volumes), np.float32)
        for t in progress(range(n_volumes), desc="lite: resampling", unit="volume"):
            bold[..., t] = ants.apply_transforms(grid_ants, to_ants(data[..., t], affine),
                                                 [motion_files[t], *to_template["fwdtransforms"]],
                                                 interpolator="linear").numpy()
        boldref_mni = ants.apply_transforms(grid_ants, to_ants(boldref, affine), to_template["fwdtransforms"]).numpy()
        field = ants.apply_transforms(grid_ants, to_ants(np.ones(reference.shape), affine), to_template["fwdtransforms"],
                                      interpolator="linear").numpy()
        registration = {"Transform": transform, "Metric": "MattesMI (ANTs default)",
                        "AffineToTemplate": ras_matrix(ants.read_transform(
                            next(f for f in to_template["fwdtransforms"] if f.endswith(".mat")))).round(6).tolist()}
    del data

    masks = tissue_masks(grid)
    mask = masks["brain"] & (field > 0.999)
    table, meta = lite_confounds(bold, mask, masks["wm"] & mask, masks["csf"] & mask, params, tr, n_dummy,
                                 source=raw_bold)

    _write_outputs(out, bold, mask, boldref_mni, table, grid, tr)
    return {
        "NumberOfVolumes": n_volumes,
        "NonSteadyStateVolumes": n_dummy,
        "RepetitionTime": tr,
        "HeadMotionCorrection": {"Tool": f"ANTsPy {ants.__version__}", "Transform": "Rigid", "Metric": "MeanSquares",
                                 "Reference": "median of the steady-state volumes", "CenterOfRotationMM": center.round(4).tolist()},
        "Registration": {"Tool": f"ANTsPy {ants.__version__}", "Template": "nilearn MNI152 (ICBM 2009a symmetric) T1, 2 mm",
                         **registration},
        "ConfoundsMetadata": meta,
        "Preprocessing": "fmriflow lite",
        "Description": DESCRIPTION,
    }


def _head_motion(data: np.ndarray, affine: np.ndarray, fixed, center: np.ndarray, n_dummy: int, seed: int,
                 tmp: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rigid registration of every volume to ``fixed``: the transform files (kept in ``tmp``), the six
    motion parameters per volume and the mean of the corrected steady-state volumes (the boldref)."""
    import ants

    n_volumes = data.shape[3]
    motion_files, params = [], np.zeros((n_volumes, 6))
    corrected_sum = np.zeros(data.shape[:3])
    for t in progress(range(n_volumes), desc="lite: head motion", unit="volume"):
        reg = ants.registration(fixed, to_ants(data[..., t], affine), type_of_transform="Rigid",
                                aff_metric="meansquares", aff_iterations=(100, 50), aff_shrink_factors=(2, 1),
                                aff_smoothing_sigmas=(1, 0), random_seed=seed, outprefix=f"{tmp}/hmc{t:04d}_")
        motion_files.append(reg["fwdtransforms"][0])
        params[t] = rigid_parameters(ras_matrix(ants.read_transform(reg["fwdtransforms"][0])), center)
        if t >= n_dummy:
            corrected_sum += reg["warpedmovout"].numpy()
    return motion_files, params, corrected_sum / (n_volumes - n_dummy)


def _write_outputs(out: PreprocFiles, bold: np.ndarray, mask: np.ndarray, boldref: np.ndarray, confounds: pd.DataFrame,
                   grid: nib.Nifti1Image, tr: float) -> None:
    """The fMRIPrep-shaped files: BOLD (float32, TR in the header, MNI qform/sform), mask, boldref, confounds."""
    from ..io import save_nifti, write_tsv

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_xyzt_units("mm", "sec")
    out_img = nib.Nifti1Image(bold, grid.affine, header)
    out_img.header.set_zooms((*grid.header.get_zooms()[:3], tr))
    out_img.set_qform(grid.affine, code=4)
    out_img.set_sform(grid.affine, code=4)
    save_nifti(out_img, out.bold)
    save_nifti(nib.Nifti1Image(mask.astype(np.uint8), grid.affine), out.mask)
    save_nifti(nib.Nifti1Image(boldref.astype(np.float32), grid.affine), boldref_path(out))
    write_tsv(out.confounds, confounds)


def tissue_masks(grid: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """Brain, white-matter and CSF masks on ``grid`` from nilearn's MNI152 maps (nearest neighbour)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template
    from nilearn.image import resample_to_img
    from scipy.ndimage import binary_erosion

    def on_grid(image):
        return np.asarray(resample_to_img(image, grid, interpolation="nearest", force_resample=True,
                                          copy_header=True).dataobj, dtype=np.float64)

    brain = on_grid(load_mni152_brain_mask(resolution=2)) > 0
    wm_prob, gm_prob = on_grid(load_mni152_wm_template(resolution=2)), on_grid(load_mni152_gm_template(resolution=2))
    inner = binary_erosion(brain, iterations=2)
    return {"brain": brain, "wm": binary_erosion(wm_prob > 0.9), "csf": inner & (wm_prob + gm_prob < 0.2)}


def lite_confounds(bold: np.ndarray, mask: np.ndarray, wm: np.ndarray, csf: np.ndarray, motion: np.ndarray,
                   tr: float, n_dummy: int, source: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep-named confounds of a (x, y, z, t) BOLD and their JSON metadata (aCompCor masks).

    ``source`` (the raw BOLD) is named in errors.
    """
    n = bold.shape[3]
    for name, region in (("brain", mask), ("white-matter", wm), ("CSF", csf)):
        if region.sum() < N_COMPCOR + 1:
            raise InputError(source, f"the {name} mask has {int(region.sum())} voxels inside the BOLD's field of view "
                                     f"after registration; aCompCor needs at least {N_COMPCOR + 1}")
    series = bold[mask].T
    columns: dict[str, np.ndarray] = {}
    for name, values in (("global_signal", series.mean(axis=1, dtype=np.float64)),
                         ("csf", bold[csf].mean(axis=0, dtype=np.float64)),
                         ("white_matter", bold[wm].mean(axis=0, dtype=np.float64))):
        columns.update(expansions(name, values))
    columns["dvars"], columns["std_dvars"] = dvars(series)
    fd = framewise_displacement(motion)
    columns["framewise_displacement"] = fd
    cosines = dct_highpass_basis(n - n_dummy, tr, HIGH_PASS_CUTOFF_S)
    meta = {}
    index = 0
    for mask_name, region in (("CSF", csf), ("WM", wm)):
        comps, explained = compcor(bold[region].T[n_dummy:], cosines, N_COMPCOR)
        for k in range(comps.shape[1]):
            name = f"a_comp_cor_{index:02d}"
            columns[name] = np.r_[np.zeros(n_dummy), comps[:, k]]
            meta[name] = {"Method": "aCompCor", "Mask": mask_name, "Retained": True,
                          "VarianceExplained": float(explained[k])}
            index += 1
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = np.r_[np.zeros(n_dummy), cosines[:, k]]
        meta[f"cosine{k:02d}"] = {"Method": "DCT-II high-pass basis", "CutoffPeriod": HIGH_PASS_CUTOFF_S}
    for i, name in enumerate(MOTION_COLUMNS):
        columns.update(expansions(name, motion[:, i]))
    columns.update(one_hot_columns("non_steady_state_outlier", range(n_dummy), n))
    outliers = np.flatnonzero((np.nan_to_num(fd) > FD_OUTLIER_MM) | (np.nan_to_num(columns["std_dvars"]) > STD_DVARS_OUTLIER))
    columns.update(one_hot_columns("motion_outlier", outliers, n))
    return pd.DataFrame(columns), meta
