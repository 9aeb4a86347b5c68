"""Where the deep FC variants lose to the logistic baseline on the benchmark cohort (CPU).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/cohort_gap.py [--subjects 1000] [--folds 5] [--seed 0]

The 1,000-subject DAG table (benchmarks/README.md, ``cohort_benchmark.py``) has the ResNet-18 on FC
(``fc_only``) 0.11 AUROC and BrainNetCNN 0.05 below the nested-CV logistic baseline. Two things
differ between them besides the network, and this script measures each on the same cohort
(``fmriflow.demo.cohort``, the defaults ``cohort_benchmark.py`` uses) and the same stratified
subject folds, side by side:

``logistic_subject``  the pipeline's ``logistic`` baseline: a subject's FC over its whole run
                      (``fmriflow.baselines.fit_predict``, penalty by inner-CV AUROC)
``logistic_windows``  the same model on what the deep variants see: the FC of each dataset
                      window (``window`` = volumes / 2, stride window / 2, as the benchmark's
                      config), windows as rows grouped by subject, a subject's score the mean of
                      its windows' (as the fine-tuning scores subjects)
``linear_recipe``     a linear layer on the standardised window FC edges trained as the deep
                      variants are (``fmriflow.finetune.trainer``'s recipe: AdamW at the
                      settings' lr and weight decay, batch 16, at most ``--epochs``, early
                      stopping on a validation share of the training subjects)

so ``logistic_subject - logistic_windows`` is the cost of window FC and ``logistic_windows -
linear_recipe`` the cost of the training recipe (no penalty search, fewer fitting subjects, early
stopping on a noisy loss) for a model with the baseline's own function class; what is left of
the deep variants' gap is the network's. Prints AUROC (fold mean and the pooled 95% bootstrap CI).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from fmriflow.baselines import fit_predict, upper_triangle
from fmriflow.demo.cohort import CohortSpec, simulate_cohort
from fmriflow.evaluation import bootstrap_ci, compute
from fmriflow.finetune.settings import FinetuneSettings, TrainSettings


def fisher_z(ts: np.ndarray) -> np.ndarray:
    """(S, R, T) series -> (S, R*(R-1)/2) Fisher-z FC edges."""
    ts = ts.astype(np.float64)
    ts = (ts - ts.mean(-1, keepdims=True)) / ts.std(-1, keepdims=True)
    corr = np.einsum("srt,sqt->srq", ts, ts) / ts.shape[-1]
    return upper_triangle(np.arctanh(np.clip(corr, -0.999, 0.999))).astype(np.float32)


def linear_recipe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray, test: np.ndarray,
                  settings: TrainSettings, val_fraction: float, epochs: int, seed: int, optimizer: str = "adamw",
                  sgd_lr: float = 1e-3) -> np.ndarray:
    """Window scores of ``test`` from a linear layer fitted on ``train`` windows by the fine-tuning recipe."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    subjects = np.unique(groups[train])
    # val_fraction 0: every training subject fits and the last epoch is kept (no early stopping)
    val_subjects = rng.choice(subjects, int(round(val_fraction * len(subjects))), replace=False)
    val = train[np.isin(groups[train], val_subjects)]
    fit = train[~np.isin(groups[train], val_subjects)]
    mean, sd = x[fit].mean(0), x[fit].std(0) + 1e-8
    t = lambda rows: torch.from_numpy((x[rows] - mean) / sd)  # noqa: E731
    xf, xv, yf, yv = t(fit), t(val), torch.from_numpy(y[fit]).float(), torch.from_numpy(y[val]).float()
    model = torch.nn.Linear(x.shape[1], 1)
    if optimizer == "adamw":  # the fine-tuning's
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    else:  # plain gradient steps (early-stopped they approximate the ridge path): is the optimiser the gap?
        opt = torch.optim.SGD(model.parameters(), lr=sgd_lr, momentum=0.9, weight_decay=settings.weight_decay)
    loss = torch.nn.BCEWithLogitsLoss()
    best, best_loss, stale = None, float("inf"), 0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(fit)))
        for start in range(0, len(fit), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            opt.zero_grad()
            loss(model(xf[rows])[:, 0], yf[rows]).backward()
            opt.step()
        if not len(val):
            best = model.state_dict()
            continue
        with torch.no_grad():
            v = float(loss(model(xv)[:, 0], yv))
        if v < best_loss - 1e-6:
            best, best_loss, stale = {k: p.clone() for k, p in model.state_dict().items()}, v, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best)
    with torch.no_grad():
        return torch.sigmoid(model(t(test))[:, 0]).numpy()


def subject_scores(window_scores: np.ndarray, groups: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    return np.array([window_scores[groups == s].mean() for s in subjects])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="as cohort_benchmark.py's --max-epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[TrainSettings.weight_decay],
                        help="linear_recipe at each AdamW weight decay (the settings' default: the variants')")
    parser.add_argument("--val-fraction", type=float, default=FinetuneSettings.val_fraction,
                        help="linear_recipe's early-stopping share of the training subjects (0: none, last epoch)")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--sgd-lr", type=float, default=1e-3)
    parser.add_argument("--linear-only", action="store_true", help="skip the two logistic read-outs")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cohort = simulate_cohort(replace(CohortSpec(), n_subjects=args.subjects))
    ts, y = cohort.timeseries, cohort.participants["group"].to_numpy()
    window = ts.shape[-1] // 2
    starts = range(0, ts.shape[-1] - window + 1, window // 2)
    subject_fc = fisher_z(ts)
    window_fc = np.concatenate([fisher_z(ts[:, :, s:s + window]) for s in starts])  # rows: start-major
    groups = np.tile(np.arange(len(y)), len(starts))
    yw = y[groups]
    print(f"cohort: {len(y)} subjects, {ts.shape[1]} regions, {ts.shape[2]} volumes; {len(starts)} windows of "
          f"{window} a subject; simulated and FC in {time.perf_counter() - started:.0f} s")

    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(y, y))
    recipes = {f"linear_recipe wd {wd:g}": replace(TrainSettings(), weight_decay=wd) for wd in args.weight_decays}
    rows = {name: [] for name in ([] if args.linear_only else ["logistic_subject", "logistic_windows"])}
    rows.update({name: [] for name in recipes})
    pooled = {name: np.empty(len(y)) for name in rows}
    for k, (train, test) in enumerate(folds):
        t0 = time.perf_counter()
        wtrain, wtest = np.flatnonzero(np.isin(groups, train)), np.flatnonzero(np.isin(groups, test))
        if not args.linear_only:
            scores, _ = fit_predict("logistic", "classification", subject_fc[train], y[train], subject_fc[test],
                                    seed=args.seed, warn=False)
            pooled["logistic_subject"][test] = scores
            scores, _ = fit_predict("logistic", "classification", window_fc[wtrain], yw[wtrain], window_fc[wtest],
                                    seed=args.seed, groups=groups[wtrain], warn=False)
            pooled["logistic_windows"][test] = subject_scores(scores, groups[wtest], test)
        for name, settings in recipes.items():
            scores = linear_recipe(window_fc, yw, groups, wtrain, wtest, settings, args.val_fraction,
                                   args.epochs, seed=args.seed + k, optimizer=args.optimizer, sgd_lr=args.sgd_lr)
            pooled[name][test] = subject_scores(scores, groups[wtest], test)
        for name in rows:
            rows[name].append(compute("classification", y[test], pooled[name][test])["auroc"])
        print(f"fold {k + 1}/{len(folds)}: " + ", ".join(f"{n} {rows[n][-1]:.3f}" for n in rows)
              + f" ({time.perf_counter() - t0:.0f} s)")
    print("\nread-out                 AUROC fold mean  pooled 95% CI")
    for name in rows:
        low, high = bootstrap_ci("classification", y, pooled[name], seed=args.seed)["auroc"]
        print(f"{name:<25}{np.mean(rows[name]):>10.3f}       {low:.3f}-{high:.3f}")


if __name__ == "__main__":
    main()
