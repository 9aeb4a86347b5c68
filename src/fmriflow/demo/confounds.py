"""The demo's confounds table: fMRIPrep's columns and JSON metadata for one simulated subject.

The numbers come from :mod:`fmriflow.confounds` (the same definitions the ``lite`` mode
uses), in its streaming form: the float32 BOLD is read once in (voxel x time) blocks with
sums in float64, so no float64 copy of a whole BOLD exists. The ``csf`` and
``white_matter`` columns are the model's compartment signals themselves (the
``fmriflow.demo`` docstring says why).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..confounds import (
    MOTION_COLUMNS, centre, compcor_from_gram, dvars_block_terms, dvars_from_terms, expansions,
    framewise_displacement, highpass_projector, highpass_residuals, one_hot_columns, top_variance_voxels,
    unit_variance_gram, voxel_blocks,
)
from .model import MODEL

_VOXEL_CHUNK = 32768  # voxels per block in the confound computations


def _confounds(bold, motion, physio, cosines, baseline, csf, wm, n_gm):
    """The confounds table (columns in fMRIPrep's order) and its JSON metadata.

    ``bold`` is (time x voxel) with the ``n_gm`` atlas voxels first; ``csf`` and ``wm``
    mark the compartments among the others, ``baseline`` is every voxel's baseline.
    """
    n_trs = len(bold)
    columns = _compartment_columns(bold, physio, baseline, csf, wm)
    q = highpass_projector(n_trs, cosines)
    # float32 pre-filter for the float32 blocks; compcor_from_gram filters again in float64
    q32 = q.astype(np.float32)
    (dvars, std_dvars), gram_a, variance = _voxel_pass(bold, q32, n_gm)
    top = top_variance_voxels(variance, MODEL.tcompcor_fraction, MODEL.n_compcor + 1)
    gram_t = unit_variance_gram(*highpass_residuals(np.ascontiguousarray(bold[:, top].T, dtype=np.float64), q32))
    a_comp, a_meta = _compcor_columns(gram_a, q, "a_comp_cor", {"Method": "aCompCor", "Mask": "combined"})
    t_comp, t_meta = _compcor_columns(gram_t, q, "t_comp_cor", {"Method": "tCompCor"})

    fd = framewise_displacement(motion, MODEL.motion_rot_radius_mm)
    columns["std_dvars"] = std_dvars
    columns["dvars"] = dvars
    columns["framewise_displacement"] = fd
    columns.update(t_comp)
    columns.update(a_comp)
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = cosines[:, k]
    for i, name in enumerate(MOTION_COLUMNS):
        columns.update(expansions(name, motion[:, i]))
    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > MODEL.fd_threshold_mm) | (np.nan_to_num(columns["std_dvars"]) > MODEL.std_dvars_threshold)
    )
    columns.update(one_hot_columns("motion_outlier", outliers, n_trs))
    meta = {**t_meta, **a_meta}
    for k in range(cosines.shape[1]):
        meta[f"cosine{k:02d}"] = {
            "Method": "DCT-II high-pass basis",
            "CutoffPeriod": MODEL.high_pass_cutoff_s,
            "Description": "Discrete cosine regressor of the high-pass filter (constant term dropped).",
        }
    return pd.DataFrame(columns), meta


def _compartment_columns(bold, physio, baseline, csf, wm) -> dict[str, np.ndarray]:
    """``global_signal`` (mask mean), ``csf`` and ``white_matter`` with their expansions."""
    columns: dict[str, np.ndarray] = {}
    gs = bold.mean(axis=1, dtype=np.float64)
    csf_col = baseline[csf].mean(dtype=np.float64) * (1 + 0.01 * MODEL.csf_weight_own * physio[:, 0])
    wm_col = baseline[wm].mean(dtype=np.float64) * (1 + 0.01 * MODEL.wm_weight_own * physio[:, 1])
    for name, values in (("global_signal", gs), ("csf", csf_col), ("white_matter", wm_col)):
        columns.update(expansions(name, values))
    return columns


def _voxel_pass(bold, q32, n_gm):
    """One pass over the voxels in float32 blocks: DVARS, the aCompCor Gram matrix and each
    voxel's filtered variance (which picks the tCompCor voxels)."""
    n_trs, n_vox = bold.shape
    diff_sq = np.zeros(n_trs - 1)
    expected_sum = 0.0
    variance = np.empty(n_vox)
    gram_a = np.zeros((n_trs, n_trs))
    for v0, block in voxel_blocks(bold, _VOXEL_CHUNK):
        centred = centre(block)
        block_diff_sq, block_expected = dvars_block_terms(block, centred)
        diff_sq += block_diff_sq
        expected_sum += block_expected
        resid, var = highpass_residuals(centred, q32)
        variance[v0 : v0 + len(block)] = var
        # aCompCor voxels: in-mask voxels outside the atlas labels (WM + CSF), index >= n_gm
        sel = (np.arange(v0, v0 + len(block)) >= n_gm) & (var > 0)
        if sel.any():
            gram_a += unit_variance_gram(resid[sel], var[sel])
    mean_image = bold.mean(axis=0, dtype=np.float64)
    dvars = dvars_from_terms(diff_sq, expected_sum, n_vox, mean_image, MODEL.dvars_intensity_normalization)
    return dvars, gram_a, variance


def _compcor_columns(gram: np.ndarray, q: np.ndarray, prefix: str, fields: dict) -> tuple[dict, dict]:
    """``<prefix>_NN`` columns and their metadata from a Gram matrix of filtered, scaled voxels."""
    comps, explained, singular = compcor_from_gram(gram, q, MODEL.n_compcor)
    cumulative = np.cumsum(explained)
    columns, meta = {}, {}
    for k in range(comps.shape[1]):
        name = f"{prefix}_{k:02d}"
        columns[name] = comps[:, k]
        meta[name] = {
            **fields,
            "Retained": True,
            "SingularValue": float(singular[k]),
            "VarianceExplained": float(explained[k]),
            "CumulativeVarianceExplained": float(cumulative[k]),
        }
    return columns, meta
