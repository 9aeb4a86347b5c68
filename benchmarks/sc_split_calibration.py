"""Calibrate the split demo's structural effect on a demo's own subjects, before any pipeline run.

    PYTHONPATH=src python benchmarks/sc_split_calibration.py data/demo-split96/ground_truth/ground_truth.json \
        --effect 0.5 0.3 0.2 --block-sd 0.15 --seeds 3

Takes the demo's regions, networks and responders from its ``ground_truth.json`` (only the population:
no BOLD, no pipeline output), draws streamline counts with ``fmriflow.sc.demo.simulate_counts`` for each
``--effect`` and seed (seed s: the stream demo-data ``--seed s`` draws), transforms them as the pipeline's
default does (``log10_count_over_volume``, the demo's region volumes) and reports the FC baselines' L2
logistic regression (nested CV) on every edge and on the network blocks (each subject's mean per pair of
networks, within-network pairs included: what ``brainsymphony_demo.py`` refits), 5 stratified folds x 3
repeats, pooled AUROC over the repeats' out-of-fold scores.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmriflow import baselines  # noqa: E402
from fmriflow.io import read_json  # noqa: E402
from fmriflow.sc.connectome import transform_connectome  # noqa: E402
from fmriflow.sc.demo import SCModel, region_volumes, simulate_counts  # noqa: E402


def pooled_auroc(x: np.ndarray, y: np.ndarray, repeats: int) -> float:
    """Pooled AUROC of the nested-CV logistic model over ``repeats`` x 5 stratified folds."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    labels, scores = [], []
    for repeat in range(repeats):
        for train, test in StratifiedKFold(5, shuffle=True, random_state=repeat).split(x, y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s, _ = baselines.fit_predict("logistic", "classification", x[train], y[train].astype(float),
                                             x[test], seed=repeat, warn=False)
            labels.append(y[test])
            scores.append(s)
    return roc_auc_score(np.concatenate(labels), np.concatenate(scores))


def main(ground_truth: Path, effects: list[float], block_sd: float, seeds: int, repeats: int) -> None:
    truth = read_json(ground_truth)
    regions = truth["regions"]
    xyz = np.array([[r["x"], r["y"], r["z"]] for r in regions], dtype=float)
    networks = np.array([r["network"] for r in regions], dtype=int)
    subjects = sorted(truth["subjects"])
    y = np.array([int(truth["subjects"][s]["response"]) for s in subjects])
    iu = np.triu_indices(len(xyz), 1)
    k = int(networks.max()) + 1
    pair = np.minimum(networks[iu[0]], networks[iu[1]]) * k + np.maximum(networks[iu[0]], networks[iu[1]])
    codes = np.unique(pair)
    print(f"{len(subjects)} subjects ({y.sum()} responders), {len(xyz)} regions, {k} networks, block_sd {block_sd}")
    for effect in effects:
        model = SCModel(effect=effect, block_sd=block_sd)
        for seed in range(seeds):
            counts, _ = simulate_counts(xyz, networks, y.astype(bool), seed=seed, model=model)
            volumes = region_volumes(len(xyz), np.random.default_rng([seed, 425]), model)
            edges = np.stack([transform_connectome(c, "log10_count_over_volume", volumes)[iu] for c in counts])
            blocks = np.stack([[e[pair == c].mean() for c in codes] for e in edges])
            print(f"effect {effect:g} seed {seed}: logistic on SC edges {pooled_auroc(edges, y, repeats):.3f}, "
                  f"on SC network blocks {pooled_auroc(blocks, y, repeats):.3f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ground_truth", type=Path, help="a demo's ground_truth/ground_truth.json")
    parser.add_argument("--effect", type=float, nargs="+", required=True)
    parser.add_argument("--block-sd", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.ground_truth, args.effect, args.block_sd, args.seeds, args.repeats)
