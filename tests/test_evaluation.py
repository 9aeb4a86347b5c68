"""The bootstrap's vectorised metrics against scikit-learn / scipy on every resample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from fmriflow import evaluation


def _sklearn(task: str, y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    if task == "regression":
        constant = np.ptp(y) == 0 or np.ptp(s) == 0
        return {"mse": skm.mean_squared_error(y, s), "mae": skm.mean_absolute_error(y, s),
                "pearson_r": np.nan if constant else stats.pearsonr(y, s)[0]}
    y, pred = y.astype(int), (s >= 0.5).astype(int)
    two = len(np.unique(y)) == 2
    return {"mcc": skm.matthews_corrcoef(y, pred), "auroc": skm.roc_auc_score(y, s) if two else np.nan,
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred) if two else np.nan,
            "f1": skm.f1_score(y, pred, zero_division=0)}


@pytest.mark.parametrize("task,n", [("classification", 24), ("classification", 6), ("regression", 30)])
def test_draw_metrics_equal_sklearn_on_each_resample(task, n):
    rng = np.random.default_rng(n)
    if task == "classification":  # few subjects and rounded scores: one-class resamples and ties occur
        y, s = (rng.random(n) < 0.4).astype(float), np.round(rng.random(n), 1)
    else:
        y = rng.normal(size=n)
        s = y + rng.normal(size=n)
    idx = rng.integers(0, n, (200, n))
    fast = evaluation._draw_metrics(task, y[idx], s[idx])
    for name, values in fast.items():
        expected = np.array([_sklearn(task, y[i], s[i])[name] for i in idx], dtype=float)
        np.testing.assert_allclose(values, expected, atol=1e-12, err_msg=name)


def test_bootstrap_ci_brackets_the_pooled_value():
    rng = np.random.default_rng(0)
    y = (rng.random(80) < 0.5).astype(float)
    s = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 80), 0, 1)
    ci = evaluation.bootstrap_ci("classification", y, s, n_boot=500)
    pooled = _sklearn("classification", y, s)
    for name, (low, high) in ci.items():
        assert low <= pooled[name] <= high, name
