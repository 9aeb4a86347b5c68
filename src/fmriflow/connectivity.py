"""Functional connectivity from region time series: Pearson, partial, tangent, dynamic.

Regions that are NaN in a run (dropped for coverage) or constant have no defined
connectivity: their rows and columns are NaN, so every matrix keeps one row per atlas
region and matrices of different runs stay aligned for group stacks and models.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

KINDS = ("pearson", "partial", "tangent")
GROUP_KINDS = ("tangent",)  # fitted on a group of runs: no per-run matrix
RUN_KINDS = ("pearson", "partial")  # defined per run; tangent needs a group reference

# The `stat-` entity of each kind's file names (XCP-D's for Pearson).
STAT = {"pearson": "pearsoncorrelation", "partial": "partialcorrelation", "tangent": "tangent"}

# BEP017 / XCP-D sidecar fields of each relationship matrix.
_COMMON = {"Weighted": True, "Directed": False, "ValidDiagonal": False, "StorageFormat": "Full"}
METADATA = {
    "pearson": {"RelationshipMeasure": "Pearson correlation", **_COMMON},
    "partial": {"RelationshipMeasure": "partial correlation (Ledoit-Wolf shrunk covariance)", **_COMMON},
    "tangent": {"RelationshipMeasure": "tangent-space embedding of Ledoit-Wolf covariances "
                "(Varoquaux et al. 2010), relative to a group geometric mean", **_COMMON},
}
PEARSON_METADATA = METADATA["pearson"]


def pearson(timeseries: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlation between every pair of regions (pandas' kernel, no shrinkage)."""
    values, valid = _valid_columns(timeseries)
    fc = np.full((values.shape[1],) * 2, np.nan)
    fc[np.ix_(valid, valid)] = pd.DataFrame(values[:, valid]).corr(method="pearson").to_numpy()
    return _frame(fc, timeseries)


def partial(timeseries: pd.DataFrame) -> pd.DataFrame:
    """Partial correlation from the Ledoit-Wolf shrunk covariance (well defined when regions > time points)."""
    from sklearn.covariance import LedoitWolf

    values, valid = _valid_columns(timeseries)
    precision = np.linalg.inv(LedoitWolf().fit(values[:, valid]).covariance_)
    scale = np.sqrt(np.diag(precision))
    part = -precision / np.outer(scale, scale)
    np.fill_diagonal(part, 1.0)
    out = np.full((values.shape[1],) * 2, np.nan)
    out[np.ix_(valid, valid)] = part
    return _frame(out, timeseries)


def run_matrix(timeseries: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The connectivity matrix of one run for a per-run ``kind``."""
    if kind not in RUN_KINDS:
        raise ValueError(f"'kind' must be one of {RUN_KINDS} for a single run; {kind!r} was provided")
    return pearson(timeseries) if kind == "pearson" else partial(timeseries)


def tangent(runs: Sequence[pd.DataFrame], fit_on: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-space connectivity of every run, relative to the geometric mean of ``fit_on`` runs.

    ``fit_on`` selects the runs that define the reference (the training subjects when the
    matrices feed a model, so test subjects never shape it); default: all runs. Regions
    must be valid in every run to enter; the others are NaN. Returns the stack
    (runs x regions x regions) and the reference covariance (valid regions only).
    """
    from nilearn.connectome import ConnectivityMeasure

    columns = list(runs[0].columns)
    if any(list(r.columns) != columns for r in runs):
        raise ValueError("all runs must have the same regions in the same order")
    valid = np.logical_and.reduce([_valid_columns(r)[1] for r in runs])
    data = [r.to_numpy(dtype=np.float64)[:, valid] for r in runs]
    fit_on = list(range(len(runs))) if fit_on is None else list(fit_on)
    if len(fit_on) < 2:
        raise ValueError("the tangent reference needs at least 2 runs")
    measure = ConnectivityMeasure(kind="tangent", standardize=False)
    measure.fit([data[i] for i in fit_on])
    stack = np.full((len(runs), len(columns), len(columns)), np.nan)
    stack[:, valid[:, None] & valid[None, :]] = measure.transform(data).reshape(len(runs), -1)
    return stack, measure.mean_


def sliding_window(timeseries: pd.DataFrame, window: int, step: int) -> np.ndarray:
    """Dynamic FC: Pearson matrices of windows of ``window`` volumes every ``step`` volumes."""
    n = len(timeseries)
    if not 3 <= window <= n or step < 1:
        raise ValueError(f"need 3 <= window <= {n} volumes and step >= 1; got window={window}, step={step}")
    starts = range(0, n - window + 1, step)
    return np.stack([pearson(timeseries.iloc[s:s + window]).to_numpy() for s in starts])


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher's z = artanh(r), with |r| clipped below 1 so the diagonal stays finite."""
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def fisher_mean(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Average correlation matrices in Fisher-z space (NaN-aware), back-transformed."""
    stack = np.stack(matrices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (dropped regions) stay NaN
        mean = np.tanh(np.nanmean(fisher_z(stack), axis=0))
    n = stack.shape[1]
    mean[np.arange(n), np.arange(n)] = np.where(np.isfinite(np.diagonal(mean)), 1.0, np.nan)
    return mean


def _valid_columns(timeseries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    values = timeseries.to_numpy(dtype=np.float64)
    if values.shape[0] < 3:
        raise ValueError(f"need at least 3 time points for connectivity, got {values.shape[0]}")
    valid = np.isfinite(values).all(axis=0)
    valid[valid] = np.ptp(values[:, valid], axis=0) > 0
    return values, valid


def _frame(matrix: np.ndarray, timeseries: pd.DataFrame) -> pd.DataFrame:
    names = list(timeseries.columns)
    return pd.DataFrame(matrix, index=pd.Index(names, name="Node"), columns=names)
