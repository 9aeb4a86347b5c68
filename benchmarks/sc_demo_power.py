"""How well the demo's structural connectomes alone separate responders (fmriflow.sc.demo's effect size).

    PYTHONPATH=src python benchmarks/sc_demo_power.py --effect 0.25 --network-sd 0.15
    PYTHONPATH=src python benchmarks/sc_demo_power.py --effect 0.5 --block-sd 0.15   # the fusion demo's

24 subjects (12 responders), A424 regions with networks from k-means on the centres (|x|, as the
demo draws them), counts from ``simulate_counts``; per seed: the AUROC of the oracle contrast (mean
log count in the effect block minus the rest) and of the FC baselines' L2 logistic regression on every
edge's log10 count, nested CV inside 5 stratified outer folds.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmriflow import baselines  # noqa: E402
from fmriflow.atlas import a424_labels_table  # noqa: E402
from fmriflow.sc.demo import SCModel, simulate_counts  # noqa: E402


def main(coordinates: str, effect: float, network_sd: float, seeds: int, block_sd: float = 0.0) -> None:
    from scipy.cluster.vq import kmeans2
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    xyz = a424_labels_table(coordinates)[["x", "y", "z"]].to_numpy(float)
    points = xyz.copy()
    points[:, 0] = np.abs(points[:, 0])
    _, networks = kmeans2(points, 8, minit="++", seed=np.random.default_rng(0))
    y = np.arange(24) % 2
    model = SCModel(effect=effect, network_sd=network_sd, block_sd=block_sd)
    i, j = np.triu_indices(len(xyz), 1)
    block = np.isin(networks[i], model.effect_networks) & np.isin(networks[j], model.effect_networks)
    for seed in range(seeds):
        counts, _ = simulate_counts(xyz, networks, y.astype(bool), seed=seed, model=model)
        x = np.log10(np.maximum(counts[:, i, j], 1))
        oracle = roc_auc_score(y, x[:, block].mean(1) - x[:, ~block].mean(1))
        scores = np.zeros(len(y))
        for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores[test], _ = baselines.fit_predict("logistic", "classification", x[train], y[train].astype(float),
                                                        x[test], seed=0, warn=False)
        print(f"seed {seed}: oracle contrast AUROC {oracle:.3f}, logistic on log SC AUROC {roc_auc_score(y, scores):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinates", default="resources/atlases/A424/A424_Coordinates.dat")
    parser.add_argument("--effect", type=float, default=SCModel().effect)
    parser.add_argument("--network-sd", type=float, default=SCModel().network_sd)
    parser.add_argument("--block-sd", type=float, default=SCModel().block_sd, help="spread per pair of networks")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    main(args.coordinates, args.effect, args.network_sd, args.seeds, args.block_sd)
