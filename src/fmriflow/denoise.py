"""Confound regression with XCP-D's strategies, scrubbing, filtering and per-run QC numbers.

Strategies (XCP-D's names; columns as fMRIPrep names them in ``desc-confounds_timeseries.tsv``):

``24P``
    the six motion parameters, their backward differences, and the squares of both.
``27P``
    24P plus the mean white-matter, CSF and global signals.
``36P``
    the nine parameters of 27P, each with its derivative and the squares of both.
``acompcor``
    the six motion parameters and their derivatives, the first five aCompCor components
    of the white-matter mask and the first five of the CSF mask, and the cosine
    (high-pass) regressors the components were computed after.
``acompcor_gsr``
    acompcor plus the mean global, CSF and white-matter signals.
``gsr_only``
    the global signal alone.
``none``
    no regressors (dummy dropping, censoring, detrending and filtering still apply).

The aCompCor components are picked from the confounds' JSON sidecar (``Mask``: ``WM`` or
``CSF``; ``Retained`` not false; in column order), or, for older fMRIPrep outputs, from
``w_comp_cor_NN`` / ``c_comp_cor_NN`` columns.

Cleaning (the order XCP-D uses, after Lindquist et al. 2019, so that filtering does not
re-introduce what the regression removed)
    0. drop the first ``dummy_scans`` volumes (``auto``: as many as the confounds flag in
       ``non_steady_state_outlier_NN`` columns);
    1. flag volumes with framewise displacement above ``fd_threshold`` (n/a counts as 0);
    2. replace the flagged volumes of the BOLD and of every regressor by a cubic spline
       through the kept volumes (before the first / after the last kept volume: the
       nearest kept value);
    3. remove the mean, and with ``detrend`` the linear trend, from BOLD and regressors;
    4. band-pass both with a zero-phase Butterworth filter (``filter_order``, cut-offs in Hz,
       constant padding over the whole run);
    5. fit the regressors to the BOLD by least squares on the kept volumes only, and
       subtract the fit from every volume;
    6. optionally z-score each voxel (mean and SD of the kept volumes);
    7. ``scrub: censor`` drops the flagged volumes; ``scrub: interpolate`` keeps them
       (their values are the cleaned interpolation), so the time axis stays whole.

Steps 0-5 are linear in the data, so they are built once per run as a matrix
(volumes out x volumes in) by applying them to the identity, and the voxels are cleaned
by one matrix product, a block of voxels at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from .confounds import MOTION_COLUMNS
from .errors import InputError
from .io import open_nifti, read_tsv, save_nifti

STRATEGIES = ("24P", "27P", "36P", "acompcor", "acompcor_gsr", "gsr_only", "none")
SCRUB_MODES = ("censor", "interpolate")
PHYSIO = ("white_matter", "csf", "global_signal")
N_COMPCOR = 5
_VOXEL_BLOCK = 16384


def _expanded(bases: Sequence[str]) -> list[str]:
    return [f"{b}{s}" for b in bases for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


def _with_derivatives(bases: Sequence[str]) -> list[str]:
    return [f"{b}{s}" for b in bases for s in ("", "_derivative1")]


def strategy_columns(strategy: str, confounds: pd.DataFrame, metadata: Mapping[str, Any] | None,
                     path: str | Path) -> list[str]:
    """The confound columns a strategy regresses out, in a fixed order.

    Raises
    ------
    ValueError
        For an unknown strategy.
    fmriflow.errors.InputError
        Naming ``path`` and the first missing column.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"'strategy' must be one of {STRATEGIES}; {strategy!r} was provided")
    if strategy == "24P":
        columns = _expanded(MOTION_COLUMNS)
    elif strategy == "27P":
        columns = _expanded(MOTION_COLUMNS) + list(PHYSIO)
    elif strategy == "36P":
        columns = _expanded(MOTION_COLUMNS + PHYSIO)
    elif strategy in ("acompcor", "acompcor_gsr"):
        columns = _with_derivatives(MOTION_COLUMNS)
        if strategy == "acompcor_gsr":
            columns += ["global_signal", "csf", "white_matter"]
        columns += compcor_columns(confounds, metadata, path)
        columns += sorted(c for c in confounds.columns if re.fullmatch(r"cosine_?\d+", c))
    elif strategy == "gsr_only":
        columns = ["global_signal"]
    else:
        columns = []
    missing = [c for c in columns if c not in confounds.columns]
    if missing:
        raise InputError(path, f"strategy {strategy!r} needs the confound column {missing[0]!r}, which is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return columns


def compcor_columns(confounds: pd.DataFrame, metadata: Mapping[str, Any] | None, path: str | Path) -> list[str]:
    """The first five white-matter and five CSF aCompCor columns (WM first)."""
    picked = []
    for mask, old_prefix in (("WM", "w_comp_cor"), ("CSF", "c_comp_cor")):
        from_meta = [
            name for name in confounds.columns
            if name.startswith("a_comp_cor_") and isinstance((metadata or {}).get(name), Mapping)
            and metadata[name].get("Mask") == mask and metadata[name].get("Retained", True) is not False
        ][:N_COMPCOR]
        old = [c for c in confounds.columns if re.fullmatch(rf"{old_prefix}_\d+", c)][:N_COMPCOR]
        chosen = from_meta or old
        if len(chosen) < N_COMPCOR:
            raise InputError(path, f"aCompCor needs {N_COMPCOR} components of the {mask} mask: found {len(chosen)} "
                                   f"(a_comp_cor_NN with \"Mask\": \"{mask}\" in the JSON sidecar, "
                                   f"or {old_prefix}_NN columns)")
        picked += chosen
    return picked


def read_confounds(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The confounds table and its JSON sidecar (empty when there is none)."""
    path = Path(path)
    table = read_tsv(path)
    sidecar = path.with_name(path.name.removesuffix(".tsv") + ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return table, meta


def dummy_volumes(confounds: pd.DataFrame, dummy_scans: int | str, path: str | Path) -> int:
    """Initial volumes to drop: an integer, or ``"auto"`` for fMRIPrep's non-steady-state flags."""
    if dummy_scans != "auto":
        return int(dummy_scans)
    columns = [c for c in confounds.columns if c.startswith("non_steady_state_outlier") and (confounds[c] == 1).any()]
    flagged = sorted(int(np.flatnonzero(confounds[c].to_numpy() == 1)[0]) for c in columns)
    if flagged != list(range(len(flagged))):
        raise InputError(path, f"non_steady_state_outlier columns flag volumes {flagged}: not the initial volumes")
    return len(flagged)


@dataclass(frozen=True)
class DenoiseSettings:
    """The ``denoise`` config section (defaults: the schema's, which a test checks)."""

    strategy: str = "36P"  # one of STRATEGIES
    fd_threshold: float | None = 0.5  # mm; volumes above are censored (0 or None: no censoring)
    scrub: str = "interpolate"  # interpolate | censor
    dummy_scans: int | str = "auto"  # volumes to drop; auto: fMRIPrep's non_steady_state_outlier columns
    detrend: bool = True
    standardize: bool = False
    high_pass: float | None = 0.01  # Hz
    low_pass: float | None = 0.08  # Hz
    filter_order: int = 2


@dataclass
class CleaningPlan:
    """What the cleaning of one run does: the linear map and the bookkeeping for sidecars."""

    matrix: np.ndarray  # (volumes out, volumes in after dummy dropping)
    n_dummy: int
    kept: np.ndarray  # bool per volume after dummy dropping: not censored
    output_volumes: np.ndarray  # input indices (after dummy dropping) of the output volumes
    regressors: list[str] = field(default_factory=list)
    degrees_of_freedom: int = 0


def cleaning_matrix(regressors: np.ndarray, kept: np.ndarray, tr: float, *, detrend: bool = True,
                    high_pass: float | None = None, low_pass: float | None = None, filter_order: int = 2,
                    scrub: str = "censor") -> np.ndarray:
    """Steps 1-5 and 7 of the module docstring as one (volumes out x volumes in) matrix."""
    n = len(kept)
    identity = np.eye(n)
    prepared_y = _prepare(identity, kept, tr, detrend, high_pass, low_pass, filter_order)  # (n, n): data -> prepared
    if regressors.shape[1]:
        prepared_x = _prepare(regressors, kept, tr, detrend, high_pass, low_pass, filter_order)
        # beta = pinv(X_kept) Y_kept; residual = Y - X beta, all linear in the prepared data
        fit = prepared_x @ np.linalg.pinv(prepared_x[kept])
        residual = prepared_y - fit @ prepared_y[kept]
    else:
        residual = prepared_y
    return residual[kept] if scrub == "censor" else residual


def _prepare(data: np.ndarray, kept: np.ndarray, tr: float, detrend: bool, high_pass, low_pass, order) -> np.ndarray:
    out = interpolate_censored(data, kept)
    out = remove_trend(out, detrend)
    if high_pass or low_pass:
        out = butterworth(out, tr, high_pass, low_pass, order)
    return out


def interpolate_censored(data: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Censored rows replaced by a cubic spline through the kept rows (nearest kept value at the ends)."""
    if kept.all():
        return data.copy()
    from scipy.interpolate import CubicSpline  # ~1 s to import: only when something was censored

    t = np.arange(len(kept))
    good = np.flatnonzero(kept)
    out = data.astype(np.float64, copy=True)
    if good.size >= 2:
        out[~kept] = CubicSpline(good, data[good], axis=0)(t[~kept])
    first, last = good[0], good[-1]
    out[:first] = data[first]
    out[last + 1:] = data[last]
    return out


def remove_trend(data: np.ndarray, detrend: bool) -> np.ndarray:
    """Residuals of each column after a least-squares fit of a constant (and a line)."""
    n = len(data)
    basis = np.ones((n, 1)) if not detrend else np.column_stack([np.ones(n), np.arange(n, dtype=float)])
    q = np.linalg.qr(basis)[0]
    return data - q @ (q.T @ data)


def butterworth(data: np.ndarray, tr: float, high_pass: float | None, low_pass: float | None, order: int) -> np.ndarray:
    """Zero-phase Butterworth band-, high- or low-pass filter along time (constant padding)."""
    from scipy.signal import butter, sosfiltfilt

    nyquist = 0.5 / tr
    for name, value in (("high_pass", high_pass), ("low_pass", low_pass)):
        if value is not None and not 0 < value < nyquist:
            raise ValueError(f"'{name}' must lie in (0, {nyquist:g}) Hz, the Nyquist frequency at TR {tr:g} s; "
                             f"{value!r} was provided")
    if high_pass and low_pass:
        sos = butter(order, [high_pass / nyquist, low_pass / nyquist], btype="bandpass", output="sos")
    elif high_pass:
        sos = butter(order, high_pass / nyquist, btype="highpass", output="sos")
    else:
        sos = butter(order, low_pass / nyquist, btype="lowpass", output="sos")
    return sosfiltfilt(sos, data, axis=0, padtype="constant", padlen=len(data) - 1)


def plan_cleaning(confounds: pd.DataFrame, metadata: Mapping[str, Any] | None, confounds_path: str | Path,
                  n_volumes: int, tr: float, settings: DenoiseSettings) -> CleaningPlan:
    """The cleaning of one run from its confounds and the denoising settings."""
    if len(confounds) != n_volumes:
        raise InputError(confounds_path, f"{len(confounds)} confound rows for {n_volumes} volumes")
    columns = strategy_columns(settings.strategy, confounds, metadata, confounds_path)
    n_dummy = dummy_volumes(confounds, settings.dummy_scans, confounds_path)
    if n_dummy >= n_volumes - 2:
        raise InputError(confounds_path, f"{n_dummy} dummy volumes leave fewer than 3 of {n_volumes}")
    steady = confounds.iloc[n_dummy:]
    regressors = steady[columns].to_numpy(dtype=np.float64)
    regressors = np.nan_to_num(regressors, nan=0.0)  # derivatives and FD are n/a in the first row
    kept = np.ones(len(steady), bool)
    threshold = settings.fd_threshold
    if threshold:
        if "framewise_displacement" not in steady:
            raise InputError(confounds_path, "censoring needs the framewise_displacement column")
        kept = np.nan_to_num(steady["framewise_displacement"].to_numpy(dtype=float), nan=0.0) <= threshold
    if kept.sum() < 3:
        raise InputError(confounds_path, f"{int(kept.sum())} volumes survive censoring at FD {threshold} mm")
    matrix = cleaning_matrix(regressors, kept, tr, detrend=settings.detrend, high_pass=settings.high_pass,
                             low_pass=settings.low_pass, filter_order=settings.filter_order, scrub=settings.scrub)
    output_volumes = np.flatnonzero(kept) if settings.scrub == "censor" else np.arange(len(kept))
    # kept volumes minus the fitted parameters (mean, trend, regressors); at or below zero
    # the fit is exact and nothing is left: denoise_run refuses fewer than its minimum
    # (qc.min_degrees_of_freedom), and the run QC excludes such runs
    t = np.arange(len(kept), dtype=float)
    full = np.column_stack([np.ones_like(t), t, regressors] if settings.detrend else [np.ones_like(t), regressors])
    dof = int(kept.sum()) - int(np.linalg.matrix_rank(full[kept]))
    return CleaningPlan(matrix, n_dummy, kept, output_volumes, columns, dof)


def denoise_run(bold: str | Path, mask: str | Path, confounds: str | Path, out: str | Path,
                settings: DenoiseSettings, *, min_degrees_of_freedom: int | None = None) -> dict:
    """Clean every in-mask voxel of ``bold`` and write the result (float32); return sidecar fields and QC.

    A plan that leaves fewer than ``min_degrees_of_freedom`` degrees of freedom (None: no
    minimum) is an ``InputError`` raised before anything is written: its "cleaned" BOLD would
    be round-off. The error lists ``strategy`` and ``min_degrees_of_freedom`` in its ``settings``.
    """
    from .io import load_nifti

    img = load_nifti(bold)
    if img.ndim != 4:
        raise InputError(bold, f"BOLD must be 4D, got shape {img.shape}")
    n_volumes, tr = img.shape[3], float(img.header.get_zooms()[3])
    table, meta = read_confounds(confounds)
    plan = plan_cleaning(table, meta, confounds, n_volumes, tr, settings)
    check_degrees_of_freedom(plan, settings, n_volumes, min_degrees_of_freedom, confounds)
    mask_img = open_nifti(mask)
    if mask_img.shape[:3] != img.shape[:3] or not np.allclose(mask_img.affine, img.affine, atol=1e-4):
        raise InputError(mask, f"mask grid {mask_img.shape[:3]} differs from the BOLD grid {img.shape[:3]}")
    in_mask = np.asarray(mask_img.dataobj) > 0
    data = np.asarray(img.dataobj, dtype=np.float32)
    series = in_mask_series(data, in_mask)[plan.n_dummy:]  # (time, voxel)
    affine, header = img.affine, img.header
    del img  # one 4D copy at a time: the output reuses ``data``'s memory
    if not np.isfinite(series).all():
        raise InputError(bold, "BOLD contains NaN or infinite values inside the brain mask")
    tsnr = temporal_snr(series)
    cleaned = np.empty((plan.matrix.shape[0], series.shape[1]), np.float32)
    for v0 in range(0, series.shape[1], _VOXEL_BLOCK):
        block = plan.matrix @ series[:, v0:v0 + _VOXEL_BLOCK].astype(np.float64)
        if settings.standardize:
            kept_rows = plan.kept[plan.output_volumes]
            sd = block[kept_rows].std(axis=0, ddof=1)
            block = (block - block[kept_rows].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        cleaned[:, v0:v0 + _VOXEL_BLOCK] = block
    del series
    out_img = nib.Nifti1Image(unmasked(cleaned, in_mask, reuse=data), affine, header)
    del data
    out_img.header.set_data_dtype(np.float32)
    out_img.header.set_xyzt_units("mm", "sec")
    save_nifti(out_img, out)

    steady = table.iloc[plan.n_dummy:]
    n_censored = int((~plan.kept).sum())
    return {
        "RepetitionTime": tr,
        "Strategy": settings.strategy,
        "ConfoundRegressors": plan.regressors,
        "NumberOfVolumesIn": int(n_volumes),
        "DummyVolumes": plan.n_dummy,
        "DegreesOfFreedom": plan.degrees_of_freedom,
        "CensoredVolumes": (np.flatnonzero(~plan.kept) + plan.n_dummy).tolist(),
        "NumberOfVolumesOut": int(plan.matrix.shape[0]),
        # indices into the input BOLD of the output volumes
        "OutputVolumes": "all" if plan.matrix.shape[0] == n_volumes else (plan.output_volumes + plan.n_dummy).tolist(),
        "qc": {
            "n_volumes": int(n_volumes),
            "n_dummy": plan.n_dummy,
            "n_censored": n_censored,
            "fraction_censored": n_censored / len(plan.kept),
            "remaining_time_s": float(plan.kept.sum() * tr),
            "degrees_of_freedom": plan.degrees_of_freedom,
            "mean_fd": _nanstat(steady, "framewise_displacement", np.nanmean),
            "max_fd": _nanstat(steady, "framewise_displacement", np.nanmax),
            "mean_dvars": _nanstat(steady, "dvars", np.nanmean),
            "mean_std_dvars": _nanstat(steady, "std_dvars", np.nanmean),
            "median_tsnr": tsnr,
        },
    }


def in_mask_series(data: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """The (time, voxel) float32 series of the in-mask voxels of 4D ``data``, voxels in Fortran order.

    NIfTI stores x fastest and nibabel returns that layout; picking each volume's voxels in
    that order reads memory in sequence (C-order picking strides across the volume, ~3x slower).
    """
    n_t = data.shape[3]
    flat = data.reshape(-1, n_t, order="F").T  # (time, voxel); a view of Fortran-ordered data
    return np.compress(in_mask.ravel(order="F"), flat, axis=1)


def unmasked(cleaned: np.ndarray, in_mask: np.ndarray, reuse: np.ndarray | None = None) -> np.ndarray:
    """4D float32 image data of the (time, voxel) ``cleaned`` (``in_mask_series``' voxel order), zero outside.

    Built in Fortran order, the order NIfTI writes, so saving copies whole volumes instead of
    gathering every value across the array. ``reuse``: a writable Fortran-ordered float32 4D
    array of the same grid and at least as many volumes (the input BOLD, no longer needed),
    overwritten to hold the result: a fresh array of a run's size costs the kernel ~1 s to map.
    """
    flat_mask = in_mask.ravel(order="F")
    n_out = cleaned.shape[0]
    if (reuse is not None and reuse.dtype == np.float32 and reuse.flags.f_contiguous and reuse.flags.writeable
            and reuse.shape[:3] == in_mask.shape and reuse.ndim == 4 and reuse.shape[3] >= n_out):
        out = reuse.reshape(-1, reuse.shape[3], order="F").T[:n_out]  # (time, voxel) view of the first volumes
        out.fill(0)
    else:
        out = np.zeros((n_out, flat_mask.size), np.float32)
    for volume, values in zip(out, cleaned):
        volume[flat_mask] = values
    return out.T.reshape((*in_mask.shape, n_out), order="F")


_LISTED_REGRESSORS = 40  # names shown in the error; longer lists end with "and N more"


def check_degrees_of_freedom(plan: CleaningPlan, settings: DenoiseSettings, n_volumes: int,
                             minimum: int | None, confounds_path: str | Path) -> None:
    """Raise ``InputError`` when ``plan`` leaves fewer than ``minimum`` degrees of freedom (None: never)."""
    if minimum is None or plan.degrees_of_freedom >= minimum:
        return
    n_kept = int(plan.kept.sum())
    names = plan.regressors[:_LISTED_REGRESSORS]
    more = len(plan.regressors) - len(names)
    listing = (": " + ", ".join(names) + (f" and {more} more" if more else "")) if names else ""
    trend = "mean, linear trend" if settings.detrend else "mean"
    n_parameters = (2 if settings.detrend else 1) + len(plan.regressors)
    raise InputError(confounds_path, (
        f"strategy {settings.strategy!r} leaves {plan.degrees_of_freedom} degrees of freedom, fewer than the minimum "
        f"of {minimum}: {n_kept} volumes kept ({n_volumes} in, {plan.n_dummy} dummy, {int((~plan.kept).sum())} "
        f"censored), {n_parameters} parameters to fit ({trend} and {len(plan.regressors)} "
        f"regressors{listing})"), settings=["strategy", "min_degrees_of_freedom"])


def temporal_snr(series: np.ndarray, block: int = _VOXEL_BLOCK) -> float:
    """Median over voxels of temporal mean / temporal SD (ddof 1); voxels with zero SD left out.

    A block of voxels at a time: the SD of the whole series at once holds a float64 copy of it.
    """
    ratios = []
    for v0 in range(0, series.shape[1], block):
        part = series[:, v0:v0 + block]
        mean = part.mean(axis=0, dtype=np.float64)
        sd = part.std(axis=0, ddof=1, dtype=np.float64)
        ok = sd > 0
        ratios.append(mean[ok] / sd[ok])
    ratios = np.concatenate(ratios) if ratios else np.empty(0)
    return float(np.median(ratios)) if ratios.size else float("nan")


def _nanstat(table: pd.DataFrame, column: str, fn) -> float:
    if column not in table:
        return float("nan")
    values = table[column].to_numpy(dtype=float)
    return float(fn(values)) if np.isfinite(values).any() else float("nan")
