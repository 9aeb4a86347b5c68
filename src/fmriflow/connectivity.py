"""Functional connectivity matrices from region time series."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

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
    pandas' Pearson kernel is used (no shrinkage, unlike nilearn's default estimator,
    and without nilearn's import cost in every job).
    """
    values = timeseries.to_numpy(dtype=np.float64)
    if values.shape[0] < 3:
        raise ValueError(f"need at least 3 time points for a correlation, got {values.shape[0]}")
    valid = np.isfinite(values).all(axis=0)
    valid[valid] = np.ptp(values[:, valid], axis=0) > 0
    fc = np.full((values.shape[1],) * 2, np.nan)
    fc[np.ix_(valid, valid)] = pd.DataFrame(values[:, valid]).corr(method="pearson").to_numpy()
    names = list(timeseries.columns)
    return pd.DataFrame(fc, index=pd.Index(names, name="Node"), columns=names)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher's z = artanh(r), with |r| clipped below 1 so the diagonal stays finite."""
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def fisher_mean(matrices: list[np.ndarray]) -> np.ndarray:
    """Average correlation matrices in Fisher-z space (NaN-aware), back-transformed."""
    stack = np.stack(matrices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (dropped regions) stay NaN
        mean = np.tanh(np.nanmean(fisher_z(stack), axis=0))
    n = stack.shape[1]
    mean[np.arange(n), np.arange(n)] = np.where(np.isfinite(np.diagonal(mean)), 1.0, np.nan)
    return mean
