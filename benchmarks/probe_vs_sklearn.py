"""The frozen probe (``baselines.fit_predict``) beside scikit-learn refits on the same outer folds.

Why: a scikit-learn refit of the early-fused BrainSymphony row (LogisticRegression on the same features and
folds) differed from the pipeline's row by up to 0.07 AUROC (session 8). This asks whether that is a defect of
the probe or the expected spread between reasonable penalty choices at a few dozen subjects. On random features
with a planted effect, or (``--results``) a pipeline run's BrainSymphony features on that run's own folds, every
fold is fitted by:

``pipeline``
    ``baselines.fit_predict`` (the probe rows' model): C by inner-CV AUROC, on its data-driven grid.
``gscv_same``
    GridSearchCV(StandardScaler + LogisticRegression) over the same grid and the same inner folds; its own
    pick among tied grid values (the first in the grid's order, weakest penalty first, up to float error).
``gscv_same_ties_strong``
    the same search, ties resolved to the strongest penalty (what GridSearchCV does with the grid ascending in C).
``gscv_default_grid``
    GridSearchCV over C in 10**-4 .. 10**4 (10 values, LogisticRegressionCV's default), the same inner folds.
``c1``
    StandardScaler + LogisticRegression(C=1): scikit-learn's default, no inner CV.
``c1_raw``
    LogisticRegression(C=1) on unstandardised features.

Prints pooled AUROC per method, its mean and largest difference from ``pipeline`` over the draws, and the share
of outer folds whose test scores differ from the pipeline's by more than 0.01 (a different C that changes the fit).

    PYTHONPATH=src python benchmarks/probe_vs_sklearn.py --draws 20
    PYTHONPATH=src python benchmarks/probe_vs_sklearn.py --results results/brainsymphony-split96

With ``--results`` it also prints the run's own rows (``probe_symphony_<fused|fmri|sc>`` of the agnostic set-up,
under ``brainsymphony.fusion: early``), which ``pipeline`` recomputes from the features.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmriflow import baselines  # noqa: E402

PARAM = "logisticregression__C"


def synthetic(n: int, p: int, effect: float, informative: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` subjects, ``p`` correlated features (two blocks, as fMRI + SC read-outs), a mean shift of ``effect``
    SD in ``informative`` features of each block for class 1, and a different scale per block."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    half = p // 2
    x = np.empty((n, p))
    for b, scale in enumerate((0.05, 0.3)):  # cosine-similarity-like scales, unequal per block
        shared = rng.normal(size=(n, 3)) @ rng.normal(size=(3, half))  # between-subject factors
        block = shared + rng.normal(size=(n, half))
        block[:, :informative] += effect * y[:, None]
        x[:, b * half:(b + 1) * half] = scale * block
    return x, y


def _search(grid, inner, x, y) -> GridSearchCV:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=100_000, tol=1e-8)),
                            {PARAM: grid}, scoring="roc_auc", cv=inner, refit=False).fit(x, y)


def _refit(c: float, x, y, x_test, scale: bool = True) -> np.ndarray:
    steps = [StandardScaler()] if scale else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_pipeline(*steps, LogisticRegression(C=c, max_iter=100_000, tol=1e-8)).fit(x, y).predict_proba(
            x_test)[:, 1]


def fold_scores(x_train, y_train, x_test, seed: int) -> tuple[dict, dict]:
    """Test scores and chosen C of every method on one outer fold."""
    out, chosen = {}, {}
    out["pipeline"], info = baselines.fit_predict("logistic", "classification", x_train, y_train.astype(float), x_test,
                                                  seed=seed, warn=False)
    chosen["pipeline"] = info.get("C", np.nan)
    inner = baselines.inner_splits("classification", y_train.astype(float), None, baselines.INNER_FOLDS, seed)
    grid = baselines.penalty_grid("logistic", baselines.Basis.fit(x_train)[0].s2)
    mean = _search(grid, inner, x_train, y_train).cv_results_["mean_test_score"]
    for name, c in (("gscv_same", grid[int(np.argmax(mean))]),  # GridSearchCV's best_index_: first maximum
                    ("gscv_same_ties_strong", grid[np.flatnonzero(mean >= mean.max() - 1e-9)[-1]])):
        chosen[name], out[name] = c, _refit(c, x_train, y_train, x_test)
    default = np.logspace(-4, 4, 10)
    mean = _search(default, inner, x_train, y_train).cv_results_["mean_test_score"]
    chosen["gscv_default_grid"] = default[int(np.argmax(mean))]
    out["gscv_default_grid"] = _refit(chosen["gscv_default_grid"], x_train, y_train, x_test)
    chosen["c1"], out["c1"] = 1.0, _refit(1.0, x_train, y_train, x_test)
    chosen["c1_raw"], out["c1_raw"] = 1.0, _refit(1.0, x_train, y_train, x_test, scale=False)
    return out, chosen


def cross_validated(x: np.ndarray, y: np.ndarray, folds: int, repeats: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold scores of every method (columns) and their chosen C, over ``repeats`` x ``folds`` stratified folds
    (seed = repeat, as the pipeline's set-ups with seed 0)."""
    rows, cs = [], []
    for repeat in range(repeats):
        for k, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=repeat).split(x, y)):
            scores, chosen = fold_scores(x[train], y[train], x[test], seed=repeat)
            rows.append(pd.DataFrame({"repeat": repeat, "fold": k, "label": y[test], **scores}))
            cs.append({"repeat": repeat, "fold": k, **chosen})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(cs)


def from_results(results: Path) -> None:
    """The run's BrainSymphony probe rows beside every method on the same subject means and outer folds."""
    from fmriflow.io import read_tsv

    out = results / "finetune" / "response"
    preds = read_tsv(out / "setup-agnostic" / "predictions.tsv", dtype={"subject": str})
    preds = preds[preds["permutation"] == 0]
    index = read_tsv(next((results / "dataset").rglob("index.tsv")), dtype={"subject": str}).set_index("sample")
    feat = next((results / "brainsymphony").glob("*/features"))
    samples = np.load(feat / "samples.npy")
    subjects = index.loc[samples, "subject"].to_numpy()
    methods = ["pipeline", "gscv_same", "gscv_same_ties_strong", "gscv_default_grid", "c1", "c1_raw"]
    for key in ("fused", "fmri", "sc"):
        row = f"probe_symphony_{key}"
        windows = np.load(feat / f"{key}.npy").astype(np.float64)
        means = {s: windows[subjects == s].mean(axis=0) for s in np.unique(subjects)}
        ours = preds[preds["variant"] == row]
        folds, rows = ours.groupby(["repeat", "fold"]), []
        for (repeat, k), test in folds:
            train = sorted(set(ours.loc[ours["repeat"] == repeat, "subject"]) - set(test["subject"]))
            x_train, x_test = np.stack([means[s] for s in train]), np.stack([means[s] for s in test["subject"]])
            y_train = ours.drop_duplicates("subject").set_index("subject").loc[train, "label"].to_numpy().astype(int)
            scores, _ = fold_scores(x_train, y_train, x_test, seed=int(repeat))
            rows.append(pd.DataFrame({"label": test["label"].to_numpy(), "run": test["score"].to_numpy(), **scores}))
        frame = pd.concat(rows, ignore_index=True)
        aurocs = {m: roc_auc_score(frame["label"], frame[m]) for m in ["run", *methods]}
        print(f"{row}: pooled AUROC " + ", ".join(f"{m} {v:.3f}" for m, v in aurocs.items())
              + f"; largest |run - pipeline| score {np.abs(frame['run'] - frame['pipeline']).max():.1e}")


def main(draws: int, n: int, p: int, effect: float, informative: int, folds: int, repeats: int) -> None:
    methods = ["pipeline", "gscv_same", "gscv_same_ties_strong", "gscv_default_grid", "c1", "c1_raw"]
    aurocs, moved, max_abs = [], {m: [] for m in methods}, 0.0
    for d in range(draws):
        x, y = synthetic(n, p, effect, informative, seed=d)
        preds, cs = cross_validated(x, y, folds, repeats)
        aurocs.append({m: roc_auc_score(preds["label"], preds[m]) for m in methods})
        for m in methods:  # folds whose test scores differ from the pipeline's by more than 0.01 somewhere
            gap = (preds[m] - preds["pipeline"]).abs().groupby([preds["repeat"], preds["fold"]]).max()
            moved[m].append(float((gap > 0.01).mean()))
        max_abs = max(max_abs, float(np.abs(preds["pipeline"] - preds["gscv_same"]).max()))
    table = pd.DataFrame(aurocs)
    diff = table.sub(table["pipeline"], axis=0)
    summary = pd.DataFrame({"pooled AUROC mean": table.mean(), "SD over draws": table.std(),
                            "mean diff vs pipeline": diff.mean(), "max |diff| vs pipeline": diff.abs().max(),
                            "share of folds moved": pd.Series({m: np.mean(v) for m, v in moved.items()})})
    print(f"{draws} draws of n={n}, p={p} ({informative} informative per block, effect {effect} SD), "
          f"{repeats} x {folds}-fold")
    print(summary.to_string(float_format="%.3f"))
    print(f"largest |pipeline - gscv_same| test score over all folds and draws: {max_abs:.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--features", type=int, default=72)
    parser.add_argument("--effect", type=float, default=0.8)
    parser.add_argument("--informative", type=int, default=4)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=None, help="a run's results folder (fusion: early)")
    a = parser.parse_args()
    if a.results is not None:
        from_results(a.results)
        sys.exit(0)
    main(a.draws, a.subjects, a.features, a.effect, a.informative, a.folds, a.repeats)
