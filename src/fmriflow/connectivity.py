"""Functional connectivity matrices from region time series."""

from __future__ import annotations

import numpy as np
import pandas as pd
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import EmpiricalCovariance

KINDS = ("pearson",)

# BEP017 / XCP-D sidecar fields of a Pearson relationship matrix.
PEARSON_METADATA = {
    "RelationshipMeasure": "Pearson correlation",
    "Weighted": True,
    "Directed": False,
    "ValidDiagonal": False,
    "StorageFormat": "Full",
}


def pearson(timeseries: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation between every pair of regions.

    Regions that are NaN (dropped for coverage) or constant have no defined correlation:
    their rows and columns are NaN, so the matrix keeps one row per atlas region.
    The plain empirical covariance is used, not nilearn's default Ledoit-Wolf shrinkage.
    """
    values = timeseries.to_numpy(dtype=np.float64)
    if values.shape[0] < 3:
        raise ValueError(f"need at least 3 time points for a correlation, got {values.shape[0]}")
    valid = np.isfinite(values).all(axis=0) & (np.nanstd(values, axis=0) > 0)
    fc = np.full((values.shape[1],) * 2, np.nan)
    if valid.sum() >= 2:
        measure = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(), standardize=False)
        fc[np.ix_(valid, valid)] = measure.fit_transform([values[:, valid]])[0]
    names = list(timeseries.columns)
    return pd.DataFrame(fc, index=pd.Index(names, name="Node"), columns=names)


def fisher_mean(matrices: list[np.ndarray]) -> np.ndarray:
    """Average correlation matrices in Fisher-z space (NaN-aware), back-transformed."""
    stack = np.stack(matrices)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.arctanh(np.clip(stack, -0.999999, 0.999999))
        mean = np.tanh(np.nanmean(z, axis=0))
    n = stack.shape[1]
    mean[np.arange(n), np.arange(n)] = np.where(np.isfinite(np.diagonal(mean)), 1.0, np.nan)
    return mean
