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
