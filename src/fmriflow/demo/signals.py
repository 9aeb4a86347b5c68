"""The demo's time series: region signals, motion and the voxel BOLD.

Holds the stationary VAR(1)/AR(1) processes (region signals, the CSF and white-matter
series), the rigid-body motion parameters (smoothed random walks and spikes) and the
voxel model that turns them into a subject's (time x voxel) float32 BOLD, as described in
the ``fmriflow.demo`` docstring.
"""

from __future__ import annotations

import numpy as np

from .model import MODEL

_TR_CHUNK = 25  # TRs simulated at a time: bounds the temporaries, fixed for determinism
_QUANTUM_INV = 16  # preprocessed BOLD values are multiples of 1/16


def _var1(rng: np.random.Generator, chol: np.ndarray, phi: float, n_trs: int) -> np.ndarray:
    """Stationary VAR(1) ``x_t = phi x_{t-1} + sqrt(1 - phi^2) L e_t``, ``x_0 = L e_0``:
    every ``x_t`` has covariance ``L L'`` exactly."""
    innov = rng.standard_normal((n_trs, chol.shape[0])) @ chol.T
    x = np.empty_like(innov)
    x[0] = innov[0]
    scale = np.sqrt(1.0 - phi**2)
    for t in range(1, n_trs):
        x[t] = phi * x[t - 1] + scale * innov[t]
    return x


def _motion(rng: np.random.Generator, n_trs: int, with_spikes: bool) -> tuple[np.ndarray, list[int]]:
    """Six rigid-body parameters (mm, mm, mm, rad, rad, rad): smoothed random walks + spikes."""
    from scipy.ndimage import gaussian_filter1d

    level = np.exp(rng.normal(0.0, MODEL.motion_level_log_sd))
    steps = rng.standard_normal((n_trs, 6)) * level
    steps[:, :3] *= MODEL.motion_trans_step_mm
    steps[:, 3:] *= MODEL.motion_rot_step_rad
    walk = gaussian_filter1d(np.cumsum(steps, axis=0), MODEL.motion_smooth_tr, axis=0, mode="nearest")
    walk -= walk[0]
    spikes: list[int] = []
    if with_spikes:
        lo, hi = MODEL.spike_count_range
        n = int(rng.integers(lo, hi + 1))
        spikes = sorted(rng.choice(np.arange(2, n_trs - 2), size=n, replace=False).tolist())
        for t in spikes:
            direction = rng.standard_normal(3)
            walk[t, :3] += direction / np.linalg.norm(direction) * rng.uniform(*MODEL.spike_trans_mm)
            rot = rng.standard_normal(3)
            walk[t, 3:] += rot / np.linalg.norm(rot) * rng.uniform(*MODEL.spike_rot_rad)
    return walk, spikes


def _voxel_bold(rng, x, region, t1v, xyz, motion, physio, cosines, subject_scale):
    """The voxel model of the ``fmriflow.demo`` docstring: (time x voxel) float32 BOLD.

    The first ``len(region)`` voxels are atlas voxels of ``region`` (0-based); the rest
    are in-mask voxels outside the atlas, split into CSF (darker T1) and WM (brighter).
    """
    n_trs, n_vox, n_gm = len(x), len(t1v), len(region)
    wm = np.zeros(n_vox, bool)
    wm[n_gm:] = t1v[n_gm:] >= np.median(t1v[n_gm:])
    csf = np.zeros(n_vox, bool)
    csf[n_gm:] = ~wm[n_gm:]

    baseline = (MODEL.baseline_intercept + MODEL.baseline_t1_slope * t1v) * subject_scale
    baseline *= 1 + MODEL.baseline_voxel_jitter * rng.standard_normal(n_vox)
    baseline = baseline.astype(np.float32)

    # nuisance weights: smooth spatial patterns (linear in position) plus voxel scatter
    design = np.column_stack([np.ones(n_vox), xyz / np.array([70.0, 90.0, 60.0])])

    def pattern(n):
        return design @ rng.standard_normal((4, n)) + MODEL.spatial_scatter * rng.standard_normal((n_vox, n))

    motion_mm = motion.copy()
    motion_mm[:, 3:] *= MODEL.motion_rot_radius_mm  # radians -> mm of arc
    w_motion = MODEL.motion_pct_per_mm * pattern(6)
    own = np.column_stack([
        np.where(csf, MODEL.csf_weight_own, MODEL.physio_weight_other),
        np.where(wm, MODEL.wm_weight_own, MODEL.physio_weight_other),
    ])
    w_physio = own * (1 + MODEL.physio_weight_jitter * rng.standard_normal((n_vox, 2)))
    n_cos = cosines.shape[1]
    w_drift = pattern(n_cos) * (MODEL.drift_pct / np.arange(1, n_cos + 1)) if n_cos else np.zeros((n_vox, 0))
    # cosines scaled to unit amplitude, so the drift weights are in percent
    regressors = np.column_stack([motion_mm, physio, cosines * np.sqrt(n_trs / 2.0)]).astype(np.float32)
    weights_t = np.ascontiguousarray(np.column_stack([w_motion, w_physio, w_drift]).T, dtype=np.float32)

    xs = x.astype(np.float32)
    amp = np.float32(MODEL.signal_pct)
    pct_scale = baseline * np.float32(0.01)
    bold = np.empty((n_trs, n_vox), np.float32)
    for t0 in range(0, n_trs, _TR_CHUNK):  # float32, in TR chunks to bound the temporaries
        sl = slice(t0, min(n_trs, t0 + _TR_CHUNK))
        p = rng.standard_normal((sl.stop - sl.start, n_vox), dtype=np.float32)
        p *= np.float32(MODEL.noise_pct)
        p += regressors[sl] @ weights_t
        p[:, :n_gm] += amp * xs[sl][:, region]
        p *= pct_scale
        p += baseline
        # Round to 1/16: the quantisation SD (0.018) is ~1e-3 of the noise SD, and the
        # zeroed low mantissa bits make the gzip files ~30 % smaller and faster to write.
        p *= np.float32(_QUANTUM_INV)
        np.rint(p, out=p)
        p /= np.float32(_QUANTUM_INV)
        bold[sl] = p
    return bold, baseline, csf, wm
