"""Nuisance time series computed the way fMRIPrep computes them.

Shared by the demo generator (which writes fMRIPrep-shaped confounds for simulated data)
and the ``lite`` preprocessing mode (which writes them for real data). Column names and
conventions follow fMRIPrep's ``desc-confounds_timeseries.tsv``:

- ``framewise_displacement``: Power et al. (2012), sum of absolute backward differences
  of the three translations (mm) plus those of the three rotations (rad) times a 50 mm
  head radius; the first value is n/a.
- ``dvars`` / ``std_dvars``: nipype's ``ComputeDVARS`` (Nichols' standardisation):
  intensities scaled so that the median of the temporal-mean image is 1000, DVARS the
  RMS over voxels of the backward difference, standardised by its expected value under
  each voxel's robust SD (IQR / 1.349) and lag-1 autocorrelation.
- ``*_derivative1`` / ``*_power2`` / ``*_derivative1_power2``: the expansions.
- ``cosineNN``: the DCT-II basis of a 128 s high-pass filter.
- ``a_comp_cor_NN``: principal components of a tissue mask's voxels after removing the
  mean and the cosines and scaling each voxel to unit variance (Behzadi et al. 2007).
- ``non_steady_state_outlier_NN``: one-hot columns of the initial volumes whose global
  signal is an outlier (T1 saturation before the magnetisation reaches steady state).

DVARS and CompCor come in two forms with the same definitions: whole-array functions
(``dvars``, ``compcor``) for a (time x voxel) array in memory, and streaming pieces for
callers that never hold one in float64 (the demo generator): ``voxel_blocks``,
``dvars_block_terms`` / ``dvars_from_terms``, ``highpass_residuals`` /
``unit_variance_gram`` / ``compcor_from_gram``. Both forms share the formulas below
(quartile positions, the intensity scale, the expected SD of the difference, the
pre-filter basis, the component sign and variance shares); they differ only in how the
sums over time and voxels are formed, which a float result depends on, so each form
keeps the summation order its callers' outputs were made with.
"""

from __future__ import annotations

import numpy as np

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
HEAD_RADIUS_MM = 50.0


def expansions(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """fMRIPrep's expansions of one column: backward difference (first row n/a) and squares."""
    deriv = np.concatenate([[np.nan], np.diff(values)])
    return {
        name: values,
        f"{name}_derivative1": deriv,
        f"{name}_derivative1_power2": deriv**2,
        f"{name}_power2": values**2,
    }


def framewise_displacement(motion: np.ndarray, radius_mm: float = HEAD_RADIUS_MM) -> np.ndarray:
    """Power et al. (2012) FD from (trans mm x3, rot rad x3); first value NaN."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(1) + radius_mm * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def dct_highpass_basis(n_trs: int, tr: float, cutoff_s: float = 128.0) -> np.ndarray:
    """DCT-II cosine regressors of a ``cutoff_s`` high-pass filter, as fMRIPrep writes them.

    Order ``max(floor(2 n tr / cutoff), 1)``, the constant term dropped, each column
    ``sqrt(2 / n) cos(pi k (t + 1/2) / n)`` for ``k = 1 .. order - 1``.
    """
    order = max(int(np.floor(2 * n_trs * tr / cutoff_s)), 1)
    t = np.arange(n_trs)
    k = np.arange(1, order)
    return np.sqrt(2.0 / n_trs) * np.cos(np.pi / n_trs * (t[:, None] + 0.5) * k[None, :])


def dvars(series: np.ndarray, intensity_normalization: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS of a (time x voxel) array; first values NaN.

    Voxels with zero robust SD are left out of the standardisation, as nipype does.
    """
    y = np.asarray(series, dtype=np.float64)
    y = y * _intensity_scale(y.mean(axis=0), intensity_normalization)
    k25, k75 = _quartile_positions(len(y))
    part = np.partition(y, (k25, k75), axis=0)
    centred = y - y.mean(axis=0)
    denom = (centred**2).sum(axis=0)
    lag1 = (centred[1:] * centred[:-1]).sum(axis=0)
    expected = np.mean(_expected_diff_sd(part[k25], part[k75], lag1, denom))
    values = np.sqrt(np.mean(np.diff(y, axis=0) ** 2, axis=1))
    return np.r_[np.nan, values], np.r_[np.nan, values / expected]


def voxel_blocks(series: np.ndarray, size: int):
    """``(start, block)`` over a (time x voxel) array: contiguous (voxel x time) copies of
    at most ``size`` voxels, so per-voxel sums run along memory and temporaries stay small."""
    for v0 in range(0, series.shape[1], size):
        yield v0, np.ascontiguousarray(series[:, v0 : v0 + size].T)


def centre(block: np.ndarray) -> np.ndarray:
    """A (voxel x time) block minus each voxel's temporal mean (summed in float64), in the block's dtype."""
    return block - block.mean(axis=1, keepdims=True, dtype=np.float64).astype(block.dtype)


def dvars_block_terms(block: np.ndarray, centred: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """One (voxel x time) block's share of DVARS, before intensity scaling.

    Returns the squared backward differences summed over the block's voxels (one value
    per volume pair) and the block's sum of per-voxel expected SDs of the difference;
    add them up over blocks and pass the totals to ``dvars_from_terms``. ``centred`` is
    ``centre(block)`` when the caller has it already.
    """
    k25, k75 = _quartile_positions(block.shape[1])
    part = np.partition(block, (k25, k75), axis=1)
    if centred is None:
        centred = centre(block)
    denom = np.einsum("vt,vt->v", centred, centred, dtype=np.float64)
    lag1 = np.einsum("vt,vt->v", centred[:, 1:], centred[:, :-1], dtype=np.float64)
    expected = _expected_diff_sd(part[:, k25], part[:, k75].astype(np.float64), lag1, denom)
    diff_sq = np.square(np.diff(block, axis=1)).sum(axis=0, dtype=np.float64)
    return diff_sq, float(expected.sum())


def dvars_from_terms(diff_sq: np.ndarray, expected_sum: float, n_voxels: int, mean_image: np.ndarray,
                     intensity_normalization: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (first values NaN) from the block terms summed over all
    ``n_voxels`` voxels; ``mean_image`` is the temporal mean of every voxel.

    The intensity scale multiplies DVARS and the expected SD alike, so it is applied here,
    after the sums. The expected SD is averaged over all ``n_voxels`` (``dvars`` averages
    over the voxels with non-zero robust SD; the same when there are none such).
    """
    scale = _intensity_scale(mean_image, intensity_normalization)
    values = scale * np.sqrt(diff_sq / n_voxels)
    std = values / (scale * expected_sum / n_voxels)
    return np.concatenate([[np.nan], values]), np.concatenate([[np.nan], std])


def _quartile_positions(n: int) -> tuple[int, int]:
    """Positions of the 25th and 75th percentiles of ``n`` sorted values ("lower" percentiles)."""
    return int(np.floor(0.25 * (n - 1))), int(np.floor(0.75 * (n - 1)))


def _intensity_scale(mean_image: np.ndarray, intensity_normalization: float) -> float:
    """Factor that brings the median of the temporal-mean image to ``intensity_normalization``."""
    return intensity_normalization / np.median(mean_image)


def _expected_diff_sd(low: np.ndarray, high: np.ndarray, lag1: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """Per-voxel expected SD of the backward difference (nipype ComputeDVARS): robust SD
    (IQR / 1.349, from the quartiles ``low`` and ``high``) times ``sqrt(2 (1 - ar1))``,
    ``ar1`` the Yule-Walker lag-1 autocorrelation ``lag1 / denom``; voxels with zero robust
    SD are dropped."""
    robust_sd = (high - low) / 1.349
    ar1 = lag1 / np.where(denom > 0, denom, 1.0)
    ok = robust_sd > 0
    return np.sqrt(2 * (1 - ar1[ok])) * robust_sd[ok]


def compcor(series: np.ndarray, basis: np.ndarray, n_components: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Leading principal components of a (time x voxel) array and their variance shares.

    The mean and ``basis`` (e.g. the high-pass cosines) are regressed out of every voxel
    and each voxel is scaled to unit variance first; constant voxels are left out. The
    sign of each component is fixed so that its largest-magnitude value is positive.
    """
    y = np.asarray(series, dtype=np.float64)
    q = highpass_projector(len(y), basis)
    resid = y - q @ (q.T @ y)
    sd = resid.std(axis=0)
    z = resid[:, sd > 0] / sd[sd > 0]
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    return _signed_components(u, n_components), _variance_shares(s**2)[:n_components]


def highpass_projector(n_trs: int, basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis (time x k) of the constant and ``basis``: CompCor's pre-filter."""
    return np.linalg.qr(np.column_stack([np.ones(n_trs), basis]))[0]


def highpass_residuals(block: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (voxel x time) block with the span of ``q`` removed, and each voxel's variance
    (float64 sums); the block's dtype is kept."""
    resid = block - (block @ q) @ q.T
    return resid, np.einsum("vt,vt->v", resid, resid, dtype=np.float64) / block.shape[1]


def unit_variance_gram(resid: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Time x time Gram matrix of (voxel x time) residuals scaled to unit variance; sum it
    over voxel blocks for ``compcor_from_gram``. ``variance`` must be positive."""
    z = resid / np.sqrt(variance).astype(resid.dtype)[:, None]
    return z.T @ z


def compcor_from_gram(gram: np.ndarray, q: np.ndarray, n_components: int = 5
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CompCor from the Gram matrix of the filtered, unit-variance voxels (``unit_variance_gram``).

    The span of ``q`` is projected out of the Gram matrix once more in float64, so a
    float32 accumulation leaves no trace of the mean or the cosines in the components.
    Returns the components (as ``compcor``), their variance shares and singular values.
    """
    filt = np.eye(len(gram)) - q @ q.T
    gram = filt @ gram @ filt
    evals, evecs = np.linalg.eigh((gram + gram.T) / 2)
    evals, evecs = evals[::-1].clip(min=0), evecs[:, ::-1]
    return (_signed_components(evecs, n_components), _variance_shares(evals)[:n_components],
            np.sqrt(evals)[:n_components])


def top_variance_voxels(variance: np.ndarray, fraction: float, minimum: int) -> np.ndarray:
    """tCompCor's voxels: the ``fraction`` of highest variance (at least ``minimum``), in index order."""
    n_top = max(int(np.ceil(fraction * len(variance))), minimum)
    return np.sort(np.argsort(variance, kind="stable")[-n_top:])


def _signed_components(u: np.ndarray, n_components: int) -> np.ndarray:
    """The first ``n_components`` columns, each signed so that its largest-magnitude value is positive."""
    comps = u[:, :n_components].copy()
    for k in range(comps.shape[1]):
        if comps[np.argmax(np.abs(comps[:, k])), k] < 0:
            comps[:, k] *= -1
    return comps


def _variance_shares(power: np.ndarray) -> np.ndarray:
    return power / power.sum()


def non_steady_state_volumes(global_signal: np.ndarray, max_volumes: int = 50, z_threshold: float = 3.5) -> int:
    """How many initial volumes are non-steady-state, from the global signal.

    A volume is an outlier when its modified z-score (Iglewicz and Hoaglin: 0.6745 times
    the distance to the median over the median absolute deviation) among the first
    ``max_volumes`` volumes exceeds ``z_threshold``; the leading run of outliers is
    the non-steady-state period (the same test fMRIPrep applies).
    """
    gs = np.asarray(global_signal, dtype=np.float64)[:max_volumes]
    mad = np.median(np.abs(gs - np.median(gs)))
    if mad == 0:
        return 0
    z = 0.6745 * (gs - np.median(gs)) / mad
    outlier = z > z_threshold  # saturation makes the first volumes brighter, never darker
    return int(np.argmin(outlier)) if not outlier.all() else len(outlier)


def one_hot_columns(prefix: str, volumes, n_trs: int) -> dict[str, np.ndarray]:
    """fMRIPrep's one-hot outlier columns ``<prefix>_00``, ``<prefix>_01``, ... for ``volumes``."""
    columns = {}
    for n, t in enumerate(volumes):
        one_hot = np.zeros(n_trs, dtype=np.int64)
        one_hot[t] = 1
        columns[f"{prefix}_{n:02d}"] = one_hot
    return columns


def rigid_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4 x 4 world (RAS mm) matrix of rigid-body parameters (trans mm x3, rot rad x3).

    Convention (shared by the demo generator and the lite mode): a point ``x`` moves to
    ``R (x - c) + c + t`` with ``R = Rz(rot_z) Ry(rot_y) Rx(rot_x)`` (rotations about the
    fixed x, then y, then z axes, right-handed) and ``c`` the centre of rotation.
    """
    from scipy.spatial.transform import Rotation

    params, center = np.asarray(params, float), np.asarray(center, float)
    rotation = Rotation.from_euler("xyz", params[3:]).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center + params[:3] - rotation @ center
    return matrix


def rigid_parameters(matrix: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The parameters (trans mm x3, rot rad x3) of a rigid 4 x 4 matrix; inverse of ``rigid_matrix``.

    A matrix with scaling or shear is projected onto the nearest rotation (polar decomposition).
    """
    from scipy.spatial.transform import Rotation

    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    center = np.asarray(center, float)
    translation = matrix[:3, :3] @ center + matrix[:3, 3] - center
    return np.r_[translation, Rotation.from_matrix(rotation).as_euler("xyz")]
