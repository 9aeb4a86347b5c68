"""The normalisations of released models' recipes, on region time series (time x regions).

A card's ``scaling.method`` names one (its first word):

``robust``
    ``(x - median) / iqr`` per region (Brain-JEPA, and fmriflow's own bundles): the card's
    statistics where it holds them, else refitted on every time point of the training runs.
``brainlm-v1``
    BrainLM v1's ``Voxelwise_RobustScaler_Normalized_Recording``, quirk included: each run is
    mean-centred per region, then the median divided by the IQR is subtracted (nothing is
    divided); median and IQR per region over the first ``window`` time points of each
    mean-centred training run, zeros left out of the IQR.
``brainlm-vitmae``
    ``(x - min) / (max - min) / constant`` with one min and max over every training run and region.

A region the run has no data for (all n/a) is 0 after scaling, as in fmriflow's datasets; an
IQR of 0 is taken as 1. The statistics are plain lists in ``recipe.json`` (NaN as null).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError

METHODS = ("robust", "brainlm-v1", "brainlm-vitmae")


def scaling_method(card: Mapping[str, Any], card_path: str) -> str:
    method = str(card["scaling"]["method"]).split()[0]
    if method not in METHODS:
        raise InputError(card_path, f"scaling.method {card['scaling']['method']!r}: a region recipe scales with one of "
                         f"{METHODS}")
    return method


def released_statistics(card: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The card's per-region median and IQR (NaN where null), or None where the authors released none."""
    scaling = card["scaling"]
    if scaling.get("median") is None or scaling.get("iqr") is None:
        return None
    as_array = lambda values: np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # noqa: E731
    return {"median": as_array(scaling["median"]), "iqr": as_array(scaling["iqr"])}


def _run_mean(x: np.ndarray) -> np.ndarray:
    """Each region's mean over the run (NaN for a dropped region, without numpy's empty-slice warning)."""
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    total = np.where(finite, x, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _robust(data: np.ndarray) -> dict[str, np.ndarray]:
    """Median and IQR per region (columns) over the finite rows; NaN for a region with none."""
    n = data.shape[1]
    median, iqr = np.full(n, np.nan), np.full(n, np.nan)
    for r in range(n):
        values = data[np.isfinite(data[:, r]), r]
        if len(values):
            q25, median[r], q75 = np.percentile(values, [25, 50, 75])
            iqr[r] = q75 - q25
    iqr[iqr == 0] = 1.0
    return {"median": median, "iqr": iqr}


def fit_statistics(method: str, train: Sequence[np.ndarray], window: int,
                   constant: float | None = None) -> dict[str, Any]:
    """Statistics of ``method`` over the training runs (each time x regions, NaN for a dropped region)."""
    if not train:
        raise InputError(None, "no training run to refit the recipe's scaling on (the dataset's splits.tsv has no "
                         "train subject with a run)")
    if method == "robust":
        return _robust(np.concatenate(train))
    if method == "brainlm-v1":
        centred = np.concatenate([(x - _run_mean(x))[:window] for x in train])
        median = _robust(centred)["median"]
        nonzero = np.where(centred == 0, np.nan, centred)  # the authors leave zeros out of the IQR
        return {"median": median, "iqr": _robust(nonzero)["iqr"]}
    values = np.concatenate([x[np.isfinite(x)] for x in train])
    return {"min": float(values.min()), "max": float(values.max()), "constant": float(constant)}


def apply(method: str, stats: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """Run ``x`` (time x regions, NaN columns for dropped regions) scaled; float32, regions x time."""
    valid = ~np.isnan(x).all(axis=0)
    if method == "robust":
        out = (x - stats["median"]) / stats["iqr"]
    elif method == "brainlm-v1":
        out = (x - _run_mean(x)) - stats["median"] / stats["iqr"]
    else:
        out = (x - stats["min"]) / (stats["max"] - stats["min"]) / stats["constant"]
    out = np.where(valid & np.isfinite(out), out, 0.0)
    return out.T.astype(np.float32)


def as_json(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The statistics as JSON values (arrays as lists, NaN as null)."""
    def value(v):
        if isinstance(v, np.ndarray):
            return [float(x) if np.isfinite(x) else None for x in v]
        return v
    return {k: value(v) for k, v in stats.items()}
