"""The language model's answers scored per subject against predicting the training mean."""

from __future__ import annotations

import numpy as np
import pandas as pd


def subject_predictions(rows: pd.DataFrame) -> pd.DataFrame:
    """Per subject: the mean of its windows' parsed answers, and how many windows gave none.

    ``rows``: subject, truth, parsed (NaN when unparseable), one row per window."""
    grouped = rows.groupby("subject", sort=True)
    return pd.DataFrame({
        "truth": grouped["truth"].first(),
        "prediction": grouped["parsed"].mean(),  # NaNs skipped: the parseable windows
        "windows": grouped.size(),
        "unparseable": grouped["parsed"].apply(lambda v: int(v.isna().sum())),
    }).reset_index()


def subject_medians(rows: pd.DataFrame) -> pd.DataFrame:
    """Per subject: the median of the numbers parsed from all its sampled answers (the estimate that
    minimises the expected absolute error under the model's answer distribution), how many answers
    it has and how many gave no number.

    ``rows``: subject, truth, parsed (NaN when unparseable), one row per sampled answer."""
    grouped = rows.groupby("subject", sort=True)
    return pd.DataFrame({
        "truth": grouped["truth"].first(),
        "prediction": grouped["parsed"].median(),  # NaNs skipped; NaN when none parsed
        "answers": grouped.size(),
        "unparseable": grouped["parsed"].apply(lambda v: int(v.isna().sum())),
    }).reset_index()


def mae_against_mean(truth, predicted, train_mean: float, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """MAE of ``predicted`` and of the constant ``train_mean``, with percentile bootstrap CIs over
    subjects and the CI of their paired difference (model - mean; below 0: the model is better)."""
    y, s = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    err_model, err_mean = np.abs(y - s), np.abs(y - train_mean)
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    alpha = (1 - level) / 2
    result = {"n_subjects": int(len(y)), "train_mean": float(train_mean)}
    for name, draws, value in (("mae", err_model[idx].mean(1), err_model.mean()),
                               ("mae_mean_baseline", err_mean[idx].mean(1), err_mean.mean()),
                               ("mae_difference", (err_model - err_mean)[idx].mean(1), (err_model - err_mean).mean())):
        result[name] = float(value)
        result[f"{name}_ci_low"], result[f"{name}_ci_high"] = (float(np.quantile(draws, alpha)),
                                                               float(np.quantile(draws, 1 - alpha)))
    return result


__all__ = ["mae_against_mean", "subject_medians", "subject_predictions"]
