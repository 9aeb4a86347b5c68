"""BrainSymphony on the demo: its probe rows beside linear models on the raw modalities.

Run after the DAG of ``benchmarks/brainsymphony_demo.yaml`` (commands in benchmarks/README.md):

    PYTHONPATH=src python benchmarks/brainsymphony_demo.py results/brainsymphony-split \
        --networks data/demo-split/ground_truth/regions.tsv

Prints the agnostic set-up's variants table (the BrainSymphony probe rows, the BrainLM-style probes,
the FC baselines and the controls), then, on the same subject folds (read from predictions.tsv),
the FC baseline's L2 logistic regression on other inputs: the transformed structural connectome
(upper triangle), FC and SC side by side (each block standardised, so neither dominates by its
scale), the same on network blocks (each modality's mean per pair of networks, ``--networks``: the
linear models' counterpart of the network read-out) and the BrainSymphony features of each modality
side by side (fMRI + SC concatenated, no gate); and the gate's functional share per subject. Pooled AUROC with the table's subject bootstrap CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmriflow import baselines, evaluation  # noqa: E402
from fmriflow.io import read_tsv  # noqa: E402

ROWS = ["probe_symphony_fused", "probe_symphony_fmri", "probe_symphony_sc", "permuted_probe_symphony_fused",
        "permuted_probe_symphony_fmri", "permuted_probe_symphony_sc", "probe", "probe_random", "logistic", "ridge",
        "permuted_logistic"]


def subject_means(values: np.ndarray, subjects: np.ndarray) -> dict[str, np.ndarray]:
    return {s: values[subjects == s].astype(np.float64).mean(axis=0) for s in np.unique(subjects)}


def standardised(block: dict[str, np.ndarray], train: list[str]) -> dict[str, np.ndarray]:
    """Each feature z-scored on the training subjects, then the block divided by sqrt(width): equal weight."""
    x = np.stack([block[s] for s in train])
    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    return {s: (v - mean) / sd / np.sqrt(len(v)) for s, v in block.items()}


def refit(name: str, blocks: list[dict[str, np.ndarray]], folds: pd.DataFrame, labels: pd.Series,
          late: bool = False) -> pd.DataFrame:
    """The logistic baseline on the concatenated blocks, on the set-up's folds (subjects lacking a block left out);
    ``late``: one logistic model per block instead, the test subjects' probabilities averaged (late fusion)."""
    rows = []
    for (repeat, fold), test_rows in folds.groupby(["repeat", "fold"]):
        have = set.intersection(*(set(b) for b in blocks))
        test = [s for s in test_rows["subject"] if s in have]
        train = sorted(have - set(test_rows["subject"]))
        scaled = [standardised(b, train) for b in blocks] if len(blocks) > 1 and not late else blocks
        groups = [[b] for b in scaled] if late else [scaled]
        scores = np.zeros(len(test))
        for group in groups:
            features = {s: np.concatenate([b[s] for b in group]) for s in have}
            x_train = np.stack([features[s] for s in train])
            x_test = np.stack([features[s] for s in test])
            part, _ = baselines.fit_predict("logistic", "classification", x_train, labels[train].to_numpy(float), x_test,
                                            seed=int(repeat), warn=False)
            scores += part / len(groups)
        rows.append(pd.DataFrame({"setup": "agnostic", "variant": name, "repeat": repeat, "permutation": 0,
                                  "fold": fold, "subject": test, "label": labels[test].to_numpy(), "score": scores}))
    return pd.concat(rows, ignore_index=True)


def network_blocks(block: dict[str, np.ndarray], networks: np.ndarray, iu: tuple) -> dict[str, np.ndarray]:
    """Each subject's upper-triangle matrix averaged per pair of networks (K x K pairs of networks, within-network pairs included)."""
    k = int(networks.max()) + 1
    pair_i, pair_j = np.minimum(networks[iu[0]], networks[iu[1]]), np.maximum(networks[iu[0]], networks[iu[1]])
    code = pair_i * k + pair_j
    keep = np.unique(code)
    return {s: np.array([v[code == c].mean() for c in keep]) for s, v in block.items()}


def paired_difference(preds: pd.DataFrame, a: str, b: str, n_boot: int = 1000) -> tuple[float, float, float]:
    """Pooled AUROC of row ``a`` minus row ``b`` on the same out-of-fold predictions (matched by repeat and
    subject) and its 95% percentile CI, resampling those predictions jointly (the table's bootstrap, paired)."""
    from sklearn.metrics import roc_auc_score

    pair = preds[preds["variant"] == a].merge(preds[preds["variant"] == b], on=["repeat", "subject"])
    y, sa, sb = pair["label_x"].to_numpy(), pair["score_x"].to_numpy(), pair["score_y"].to_numpy()
    idx = np.random.default_rng(0).integers(0, len(y), (n_boot, len(y)))
    draws = [roc_auc_score(y[i], sa[i]) - roc_auc_score(y[i], sb[i]) for i in idx if 0 < y[i].sum() < len(i)]
    return roc_auc_score(y, sa) - roc_auc_score(y, sb), *np.quantile(draws, [0.025, 0.975])


def load_run(results: Path) -> SimpleNamespace:
    """A split-demo run's agnostic folds and labels (from the FC baseline's predictions) and, per subject, its
    FC and transformed SC upper triangles and BrainSymphony's fMRI and SC features (window means)."""
    out = results / "finetune" / "response"
    preds = read_tsv(out / "setup-agnostic" / "predictions.tsv", dtype={"subject": str})
    folds = preds[preds["variant"] == "logistic"][["repeat", "fold", "subject"]]
    labels = preds[preds["variant"] == "logistic"].drop_duplicates("subject").set_index("subject")["label"]
    dataset = next(p.parent for p in (results / "dataset").rglob("index.tsv"))
    index = read_tsv(dataset / "index.tsv", dtype={"subject": str}).set_index("sample")
    features = out / "features"
    samples = np.load(features / "samples.npy")
    fc = subject_means(np.load(features / "fc.npy"), index.loc[samples, "subject"].to_numpy())
    iu = np.triu_indices(next(iter(fc.values())).shape[0], 1)
    fc = {s: m[iu] for s, m in fc.items()}
    sc_dir = next((results / "sc").glob("atlas-*/transform-*"))
    sc = {p.name[4:].split("_")[0]: read_tsv(p).to_numpy(float)[iu] for p in sorted(sc_dir.glob("sub-*.tsv"))}
    sym_dir = next((results / "brainsymphony").glob("*/features"))
    sym_subjects = index.loc[np.load(sym_dir / "samples.npy"), "subject"].to_numpy()
    sym = {k: subject_means(np.load(sym_dir / f"{k}.npy"), sym_subjects) for k in ("fmri", "sc")}
    regions = read_tsv(dataset / "scaling.tsv")["region"].astype(str).tolist()
    return SimpleNamespace(out=out, preds=preds, folds=folds, labels=labels, fc=fc, sc=sc, sym=sym, sym_dir=sym_dir,
                           iu=iu, regions=regions)


def network_codes(regions: list[str], networks_tsv: Path) -> np.ndarray:
    """Each dataset region's network as 0..K-1, from a TSV of name and network."""
    lut = read_tsv(networks_tsv).astype({"name": str}).set_index("name")["network"]
    return np.unique(lut.loc[regions].to_numpy(), return_inverse=True)[1]


def main(results: Path, networks_tsv: Path | None, n_boot: int = 1000) -> None:
    run = load_run(results)
    out, preds, folds, labels, fc, sc, sym, sym_dir, iu = (run.out, run.preds, run.folds, run.labels, run.fc, run.sc,
                                                         run.sym, run.sym_dir, run.iu)
    table = read_tsv(out / "variants.tsv").set_index("variant")
    print(table.loc[[r for r in ROWS if r in table.index],
                    ["n_subjects", "auroc_pooled", "auroc_ci_low", "auroc_ci_high", "auroc_mean", "auroc_sd"]]
          .to_string(float_format="%.3f"))
    refits = [refit("logistic on SC (upper triangle)", [sc], folds, labels),
              refit("logistic on FC + SC (blocks standardised)", [fc, sc], folds, labels),
              refit("logistic on FC again (check: = the table's)", [fc], folds, labels),
              refit("probe on symphony fMRI + SC embeddings, concatenated", [sym["fmri"], sym["sc"]], folds, labels),
              refit("late fusion: mean of the symphony fMRI and SC probes", [sym["fmri"], sym["sc"]], folds, labels,
                    late=True),
              refit("late fusion: mean of the FC and SC logistic models", [fc, sc], folds, labels, late=True)]
    if networks_tsv is not None:
        codes = network_codes(run.regions, networks_tsv)
        fc_net, sc_net = network_blocks(fc, codes, iu), network_blocks(sc, codes, iu)
        refits += [refit("logistic on FC network blocks", [fc_net], folds, labels),
                   refit("logistic on SC network blocks", [sc_net], folds, labels),
                   refit("logistic on FC + SC network blocks (standardised)", [fc_net, sc_net], folds, labels),
                   refit("late fusion: mean of the FC and SC network-block models", [fc_net, sc_net], folds, labels,
                         late=True)]
    refits = pd.concat(refits, ignore_index=True)
    metrics = evaluation.summarise(refits, "classification", n_boot=n_boot, seed=0)
    print(metrics.set_index("variant")[["n_subjects", "auroc_pooled", "auroc_ci_low", "auroc_ci_high", "auroc_mean",
                                        "auroc_sd"]].to_string(float_format="%.3f"))
    both = pd.concat([preds[preds["permutation"] == 0], refits], ignore_index=True)
    late = "late fusion: mean of the symphony fMRI and SC probes"
    print("paired AUROC differences, same predictions resampled jointly [95% CI]:")
    for a, b in ((f, u) for f in ("probe_symphony_fused", late) for u in ("probe_symphony_fmri", "probe_symphony_sc")):
        print(f"  {a} - {b}: %+.3f [%+.3f, %+.3f]" % paired_difference(both, a, b, n_boot))
    log = read_tsv(out / "setup-agnostic" / "training_log.tsv")
    if "w_fmri" in log.columns:  # brainsymphony.fusion late: the fMRI probe's weight each fold's inner CV chose
        for row in ("probe_symphony_fused", "permuted_probe_symphony_fused"):
            w = log.loc[log["variant"] == row, "w_fmri"]
            print(f"{row}: w_fmri per fold, value (count): " + ", ".join(
                f"{v:.1f} ({n})" for v, n in w.value_counts().sort_index().items()))
    gate = read_tsv(sym_dir / "subjects.tsv", dtype={"subject": str}).set_index("subject")["gate_functional"]
    by_group = gate.groupby(labels.reindex(gate.index)).agg(["mean", "min", "max"])
    print("gate functional share per subject (1 = all time series), by label:")
    print(by_group.to_string(float_format="%.4f"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--networks", type=Path, default=None, help="TSV with name and network per region")
    args = parser.parse_args()
    main(args.results, args.networks)
