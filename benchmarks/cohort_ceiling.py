"""What the benchmark cohort lets a model show: the FC baseline, dynamics and told-where read-outs.

    PYTHONPATH=src python benchmarks/cohort_ceiling.py [--subjects 1000] [--regions 100] [--volumes 200]
        [--train-sizes 100 200 400 800] [--folds 5] [--seed 0]

Simulates the cohort that ``cohort_benchmark.py`` runs the DAG on (``fmriflow.demo.cohort``,
same defaults) and scores, on one set of stratified subject folds, with fmriflow's own nested-CV
logistic baseline (``fmriflow.baselines.fit_predict``):

``fc_edges``        every Fisher-z FC edge: the pipeline's ``logistic`` baseline
``lag1``            every region's lag-1 autocorrelation (the dynamics effect's carrier; told nothing)
``fc_edges+lag1``   both: the linear baseline of what a time-series model could add to FC
``told_fc``         4 summaries that are told where the effect lives: the mean Fisher-z of the
                    affected block (pairs of affected regions), of the affected-unaffected pairs,
                    of the unaffected pairs, and over all pairs
``told_lag1``       the mean lag-1 autocorrelation of affected and of unaffected regions
``told_both``       the two together

The learning curve of ``fc_edges`` (training subjects subsampled within each fold, stratified;
test folds unchanged) says what more subjects buy; ``fc_edges+lag1`` against ``fc_edges`` says
what the dynamics add at this size for a linear read-out; the ``told_`` summaries say whether
knowing the effect's location beats learning it from every edge (the generative model is in
``fmriflow.demo.cohort``: a shared factor in the affected networks, slower dynamics there).
Prints AUROC (fold mean and the 95% bootstrap CI of the pooled out-of-fold scores) per read-out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedKFold

from fmriflow.baselines import fit_predict, upper_triangle
from fmriflow.demo.cohort import CohortSpec, simulate_cohort
from fmriflow.evaluation import bootstrap_ci, compute


def features(cohort) -> dict[str, np.ndarray]:
    """Per-subject read-outs (rows: subjects)."""
    ts = cohort.timeseries.astype(np.float64)
    ts = (ts - ts.mean(-1, keepdims=True)) / ts.std(-1, keepdims=True)
    corr = np.einsum("srt,sqt->srq", ts, ts) / ts.shape[-1]
    z = np.arctanh(np.clip(corr, -0.999, 0.999))
    lag1 = np.mean(ts[..., 1:] * ts[..., :-1], axis=-1)
    affected = np.isin(cohort.networks, cohort.spec.affected_networks)
    off = ~np.eye(len(affected), dtype=bool)
    blocks = {"affected": np.outer(affected, affected) & off, "mixed": np.outer(affected, ~affected),
              "unaffected": np.outer(~affected, ~affected) & off, "all": off}
    told_fc = np.stack([z[:, m].mean(axis=1) for m in blocks.values()], axis=1)
    told_lag1 = np.stack([lag1[:, affected].mean(axis=1), lag1[:, ~affected].mean(axis=1)], axis=1)
    edges = upper_triangle(z)
    return {"fc_edges": edges, "lag1": lag1, "fc_edges+lag1": np.hstack([edges, lag1]), "told_fc": told_fc,
            "told_lag1": told_lag1, "told_both": np.hstack([told_fc, told_lag1])}


def evaluate(x: np.ndarray, y: np.ndarray, folds: list, train_size: int | None, seed: int) -> dict:
    """Out-of-fold scores of the nested-CV logistic baseline; the fold mean AUROC and the pooled CI."""
    pooled = np.empty(len(y))
    per_fold = []
    for k, (train, test) in enumerate(folds):
        if train_size is not None and train_size < len(train):
            rng = np.random.default_rng([seed, k])
            # a stratified subsample: the class shares of the fold's training subjects
            train = np.concatenate([rng.choice(train[y[train] == c], round(train_size * np.mean(y[train] == c)),
                                               replace=False) for c in (0, 1)])
        scores, _ = fit_predict("logistic", "classification", x[train], y[train], x[test], seed=seed, warn=False)
        pooled[test] = scores
        per_fold.append(compute("classification", y[test], scores)["auroc"])
    low, high = bootstrap_ci("classification", y, pooled, seed=seed)["auroc"]
    return {"auroc": float(np.mean(per_fold)), "low": low, "high": high}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[100, 200, 400])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    spec = replace(CohortSpec(), n_subjects=args.subjects, n_regions=args.regions, n_volumes=args.volumes)
    cohort = simulate_cohort(spec)
    y = cohort.participants["group"].to_numpy()
    feats = features(cohort)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(np.zeros(len(y)), y))
    n_train = min(len(train) for train, _ in folds)
    print(f"{args.subjects} subjects ({y.sum()} patients), {args.regions} regions x {args.volumes} volumes, "
          f"{args.folds} folds (~{n_train} training subjects each); cohort and features in "
          f"{time.perf_counter() - started:.0f} s")
    print(f"{'read-out':16s} {'features':>8s} {'train':>6s} {'AUROC':>6s}  95% CI (pooled bootstrap)  seconds")
    rows = [(name, None) for name in feats] + [("fc_edges", n) for n in args.train_sizes if n < n_train]
    for name, size in rows:
        t0 = time.perf_counter()
        r = evaluate(feats[name], y, folds, size, args.seed)
        print(f"{name:16s} {feats[name].shape[1]:8d} {size or n_train:6d} {r['auroc']:6.3f}  "
              f"{r['low']:.3f}-{r['high']:.3f}              {time.perf_counter() - t0:6.0f}", flush=True)


if __name__ == "__main__":
    main()
