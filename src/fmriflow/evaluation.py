"""Metrics for subject-level predictions: per fold, mean and sd over folds, bootstrap CI;
ROC points and confusion counts (the report draws them).

Classification scores are probabilities of the positive class (label 1) and predictions
threshold them at 0.5; regression scores are the predicted values. Windows are aggregated
per subject (mean score) before any metric, so every subject counts once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

CLASSIFICATION = ("mcc", "auroc", "accuracy", "balanced_accuracy", "f1")
REGRESSION = ("mse", "mae", "pearson_r")
THRESHOLD = 0.5  # a classification score at or above it predicts label 1


def predicted_class(scores) -> np.ndarray:
    """Class predicted from classification scores: 1 at ``THRESHOLD`` or above, else 0."""
    return (np.asarray(scores, dtype=float) >= THRESHOLD).astype(int)


def compute(task: str, labels, scores) -> dict[str, float]:
    """Every metric of ``task`` ('classification' or 'regression'); NaN where undefined."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    if task == "classification":
        pred = predicted_class(s)
        y = y.astype(int)
        two_classes = len(np.unique(y)) == 2
        return {
            "mcc": float(skm.matthews_corrcoef(y, pred)),
            "auroc": float(skm.roc_auc_score(y, s)) if two_classes else float("nan"),
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if two_classes else float("nan"),
            "f1": float(skm.f1_score(y, pred, zero_division=0)),
        }
    if task == "regression":
        constant = np.ptp(y) == 0 or np.ptp(s) == 0
        return {
            "mse": float(np.mean((y - s) ** 2)),
            "mae": float(np.mean(np.abs(y - s))),
            "pearson_r": float("nan") if constant else float(stats.pearsonr(y, s)[0]),
        }
    raise ValueError(f"'task' must be 'classification' or 'regression'. Got: {task!r}")


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates at every distinct score threshold, and the area under them.

    Tied scores move both rates at once (one point per distinct score), so the area is the
    probability that a random positive outscores a random negative, ties counting half.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def confusion(labels, scores) -> np.ndarray:
    """2 x 2 counts, rows true label 0/1, columns predicted 0/1 (``predicted_class``)."""
    y = np.asarray(labels, dtype=int)
    pred = predicted_class(scores)
    return np.array([[int(((y == a) & (pred == b)).sum()) for b in (0, 1)] for a in (0, 1)])


def bootstrap_ci(task: str, labels, scores, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of each metric, resampling subjects with replacement.

    Every draw's metrics are computed at once from an (n_boot, n) index matrix (``_draw_metrics``):
    the same values as ``compute`` on each resample, without 5 sklearn calls per draw, which took
    about a minute of one core per fine-tuning set-up.
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    draws = _draw_metrics(task, y[idx], s[idx])
    alpha = (1 - level) / 2
    return {name: (float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha)))
            if np.isfinite(v).any() else (float("nan"), float("nan"))
            for name, v in draws.items()}


def _draw_metrics(task: str, y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """``compute``'s metrics of each row of labels ``y`` and scores ``s`` (shape (draws, n))."""
    if task == "regression":
        constant = (np.ptp(y, axis=1) == 0) | (np.ptp(s, axis=1) == 0)
        yc, sc = y - y.mean(1, keepdims=True), s - s.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (yc * sc).sum(1) / np.sqrt((yc ** 2).sum(1) * (sc ** 2).sum(1))
        return {"mse": np.mean((y - s) ** 2, 1), "mae": np.mean(np.abs(y - s), 1),
                "pearson_r": np.where(constant, np.nan, np.clip(r, -1, 1))}
    if task != "classification":
        raise ValueError(f"'task' must be 'classification' or 'regression'. Got: {task!r}")
    y = y.astype(int)
    pred = predicted_class(s)
    tp = ((y == 1) & (pred == 1)).sum(1).astype(float)
    tn = ((y == 0) & (pred == 0)).sum(1).astype(float)
    fp = ((y == 0) & (pred == 1)).sum(1).astype(float)
    fn = ((y == 1) & (pred == 0)).sum(1).astype(float)
    n_pos, n_neg = tp + fn, tn + fp
    two = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.sqrt((tp + fp) * n_pos * n_neg * (tn + fn))
        mcc = np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)  # sklearn: 0 when undefined
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        balanced = np.where(two, (tp / n_pos + tn / n_neg) / 2, np.nan)
        # Mann-Whitney: average ranks, so tied scores count half
        ranks = stats.rankdata(s, axis=1)
        auroc = ((ranks * (y == 1)).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {"mcc": mcc, "auroc": np.where(two, auroc, np.nan), "accuracy": (tp + tn) / y.shape[1],
            "balanced_accuracy": balanced, "f1": f1}


def summarise(predictions: pd.DataFrame, task: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (setup, variant): mean and sd over folds, bootstrap CI on pooled folds.

    ``predictions`` holds subject-level rows: setup, variant, repeat, fold, subject, label,
    score, and optionally permutation (label-permuted controls run several permutations per
    fold). Fold metrics are computed within each (repeat, permutation, fold); the CI pools
    every out-of-fold prediction of all repeats and permutations (a subject appears once
    per repeat and permutation).
    """
    keys = ["repeat", "permutation", "fold"] if "permutation" in predictions.columns else ["repeat", "fold"]
    names = CLASSIFICATION if task == "classification" else REGRESSION
    rows = []
    for (setup, variant), frame in predictions.groupby(["setup", "variant"], sort=False):
        per_fold = pd.DataFrame([compute(task, f["label"], f["score"])
                                 for _, f in frame.groupby(keys)])
        ci = bootstrap_ci(task, frame["label"], frame["score"], n_boot=n_boot, seed=seed)
        pooled = compute(task, frame["label"], frame["score"])
        row = {"setup": setup, "variant": variant, "n_subjects": frame["subject"].nunique(),
               "n_folds": len(per_fold)}
        for name in names:
            row[f"{name}_mean"] = float(per_fold[name].mean())
            row[f"{name}_sd"] = float(per_fold[name].std(ddof=1)) if len(per_fold) > 1 else float("nan")
            row[f"{name}_pooled"] = pooled[name]
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci[name]
        rows.append(row)
    return pd.DataFrame(rows)
