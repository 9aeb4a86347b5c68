"""Run-level quality-control numbers from fMRIPrep-style confounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError


def motion_summary(confounds: pd.DataFrame, path: str | Path, fd_threshold: float = 0.5) -> dict:
    """Mean and max framewise displacement (Power) and the share of volumes above threshold."""
    if "framewise_displacement" not in confounds:
        raise InputError(path, "confounds lack the framewise_displacement column")
    fd = confounds["framewise_displacement"].to_numpy(dtype=float)
    fd = fd[np.isfinite(fd)]  # the first volume has no FD ('n/a')
    summary = {
        "mean_fd": float(fd.mean()) if fd.size else float("nan"),
        "max_fd": float(fd.max()) if fd.size else float("nan"),
        "fd_threshold": fd_threshold,
        "n_high_motion": int((fd > fd_threshold).sum()),
    }
    if "std_dvars" in confounds:
        dvars = confounds["std_dvars"].to_numpy(dtype=float)
        summary["mean_std_dvars"] = float(np.nanmean(dvars)) if np.isfinite(dvars).any() else float("nan")
    return summary


# Exclusion criteria: config key in the qc section -> (column of the run table, comparison, label).
# A run is excluded when any criterion with a threshold set fails; the reasons name each one.
EXCLUSION_CRITERIA = {
    "max_mean_fd": ("mean_fd", ">", "mean FD {value:.3g} mm > {threshold:g} mm"),
    "max_fd": ("max_fd", ">", "max FD {value:.3g} mm > {threshold:g} mm"),
    "max_fraction_censored": ("fraction_censored", ">", "{value:.1%} of volumes censored > {threshold:.1%}"),
    "min_time": ("remaining_time_s", "<", "{value:.4g} s left after censoring < {threshold:g} s"),
    "min_degrees_of_freedom": ("degrees_of_freedom", "<",
                               "{value:.0f} degrees of freedom left after denoising < {threshold:g}"),
    "min_tsnr": ("median_tsnr", "<", "median tSNR {value:.3g} < {threshold:g}"),
    "min_region_coverage": ("region_coverage", "<", "{value:.1%} of atlas regions covered < {threshold:.1%}"),
}


def region_coverage(coverage: pd.DataFrame) -> dict:
    """Share of atlas regions kept by the parcellation (coverage at or above its minimum) and mean coverage."""
    used = coverage["used"].astype(str).str.lower() == "true"
    return {"region_coverage": float(used.mean()), "mean_region_coverage": float(coverage["coverage"].mean()),
            "n_regions_dropped": int((~used).sum())}


def exclusions(runs: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    """``runs`` with ``included`` and ``exclusion_reasons`` columns (reasons joined by '; ').

    A missing value (n/a) fails no criterion: it cannot be judged, and the table shows it.
    """
    reasons: list[list[str]] = [[] for _ in range(len(runs))]
    for key, (column, op, text) in EXCLUSION_CRITERIA.items():
        threshold = thresholds.get(key)
        if threshold is None:
            continue
        values = runs[column].to_numpy(dtype=float)
        failed = values > threshold if op == ">" else values < threshold
        for i in np.flatnonzero(failed & np.isfinite(values)):
            reasons[i].append(text.format(value=values[i], threshold=threshold))
    out = runs.copy()
    out["included"] = [not r for r in reasons]
    out["exclusion_reasons"] = ["; ".join(r) if r else "n/a" for r in reasons]
    return out
