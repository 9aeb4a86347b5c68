"""Which BrainSymphony read-out does not fuse early: each read-out beside the other modality's raw network blocks.

Run after the DAG of a split demo (benchmarks/README.md, "balanced on the model's read-outs"):

    PYTHONPATH=src python benchmarks/brainsymphony_fusion_swap.py results/brainsymphony-split96c \\
        --networks data/demo-split96c/ground_truth/regions.tsv

On the run's subject folds, the FC baseline's L2 logistic regression (``brainsymphony_demo.refit``) on the fMRI
read-out (A), the SC read-out (B), the FC network blocks (C) and the SC network blocks (D), alone, fused early
(blocks standardised, concatenated) in the pairs AB, CD, AD and CB, and late (probabilities averaged) in AB and CD;
then the within-class correlation of the unimodal out-of-fold scores, each read-out's per-pair correlation with
its raw counterpart across subjects, and the penalty (C) the inner CV chose alone per fold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brainsymphony_demo import load_run, network_blocks, network_codes, refit  # noqa: E402

from fmriflow import baselines, evaluation  # noqa: E402


def blocks(results: Path, networks_tsv: Path):
    """The run's folds, labels and the four subject-level blocks (A, B, C, D)."""
    run = load_run(results)
    codes = network_codes(run.regions, networks_tsv)
    return run.folds, run.labels, {"A": run.sym["fmri"], "B": run.sym["sc"], "C": network_blocks(run.fc, codes, run.iu),
                                   "D": network_blocks(run.sc, codes, run.iu)}


def chosen_penalties(block: dict, folds: pd.DataFrame, labels: pd.Series) -> np.ndarray:
    out = []
    for (repeat, _), test_rows in folds.groupby(["repeat", "fold"]):
        train = sorted(set(labels.index) - set(test_rows["subject"]))
        x = np.stack([block[s] for s in train])
        _, info = baselines.fit_predict("logistic", "classification", x, labels[train].to_numpy(float), x[:1],
                                        seed=int(repeat), warn=False)
        out.append(info["C"])
    return np.array(out)


def main(results: Path, networks_tsv: Path) -> None:
    folds, labels, b = blocks(results, networks_tsv)
    names = {"A": "BrainSymphony fMRI read-out", "B": "BrainSymphony SC read-out", "C": "FC network blocks",
             "D": "SC network blocks"}
    runs = [refit(f"{k} {names[k]}", [b[k]], folds, labels) for k in "ABCD"]
    runs += [refit(f"{p} early", [b[p[0]], b[p[1]]], folds, labels) for p in ("AB", "CD", "AD", "CB")]
    runs += [refit(f"{p} late (mean)", [b[p[0]], b[p[1]]], folds, labels, late=True) for p in ("AB", "CD")]
    runs = pd.concat(runs, ignore_index=True)
    table = evaluation.summarise(runs, "classification", n_boot=1000, seed=0).set_index("variant")
    print(table[["auroc_pooled", "auroc_ci_low", "auroc_ci_high"]].to_string(float_format="%.3f"))
    scores = runs.pivot_table(index=["repeat", "subject"], columns="variant", values="score")
    label = runs.drop_duplicates(["repeat", "subject"]).set_index(["repeat", "subject"])["label"].reindex(scores.index)
    for p, q in (("A", "B"), ("C", "D")):
        a, c = f"{p} {names[p]}", f"{q} {names[q]}"
        r = [np.corrcoef(scores.loc[label == k, a], scores.loc[label == k, c])[0, 1] for k in (0, 1)]
        print(f"within-class correlation of out-of-fold scores, {p} ~ {q}: class 0 {r[0]:.3f}, class 1 {r[1]:.3f}")
    subjects = sorted(b["A"])
    for p, q in (("A", "C"), ("B", "D")):
        x, y = (np.stack([b[k][s] for s in subjects]) for k in (p, q))
        r = np.array([np.corrcoef(x[:, i], y[:, i])[0, 1] for i in range(x.shape[1])])
        print(f"per-pair correlation across subjects, {p} ~ {q}: median {np.median(r):.3f} ({r.min():.3f}-{r.max():.3f})")
    for k in "ABCD":
        c = chosen_penalties(b[k], folds, labels)
        print(f"{k}: inner-CV C per fold, median {np.median(c):.3g} ({c.min():.3g}-{c.max():.3g})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--networks", type=Path, required=True, help="TSV with name and network per region")
    args = parser.parse_args()
    main(args.results, args.networks)
