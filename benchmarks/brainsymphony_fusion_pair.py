"""BrainSymphony's ``fusion: late`` run beside its ``fusion: early`` run on the same folds (benchmarks/README.md,
"The split demo at 96 subjects"): the late run's rows, that its unimodal rows equal the early run's, the paired
AUROC differences (late fused - fMRI, - SC, - early fused) and the weights its inner CV chose.

    PYTHONPATH=src python benchmarks/brainsymphony_fusion_pair.py results/brainsymphony-split96-late \
        results/brainsymphony-split96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from brainsymphony_demo import ROWS, paired_difference  # noqa: E402
from fmriflow.io import read_tsv  # noqa: E402


def main(late_dir: Path, early_dir: Path, n_boot: int = 1000) -> None:
    late, early = (d / "finetune" / "response" for d in (late_dir, early_dir))
    table = read_tsv(late / "variants.tsv").set_index("variant")
    print(table.loc[[r for r in ROWS if r in table.index],
                    ["n_subjects", "auroc_pooled", "auroc_ci_low", "auroc_ci_high", "auroc_mean", "auroc_sd"]]
          .to_string(float_format="%.3f"))
    preds = {k: read_tsv(d / "setup-agnostic" / "predictions.tsv", dtype={"subject": str}) for k, d in
             (("late", late), ("early", early))}
    preds = {k: p[p["permutation"] == 0] for k, p in preds.items()}
    for row in ("probe_symphony_fmri", "probe_symphony_sc"):
        a, b = (preds[k][preds[k]["variant"] == row].sort_values(["repeat", "subject"]) for k in ("late", "early"))
        same = (a[["fold", "score"]].to_numpy() == b[["fold", "score"]].to_numpy()).all()
        print(f"{row}: the same folds and scores as the early run's: {same}")
    fused = preds["early"][preds["early"]["variant"] == "probe_symphony_fused"].assign(variant="early fused")
    both = pd.concat([preds["late"], fused], ignore_index=True)
    print("paired AUROC differences, same predictions resampled jointly [95% CI]:")
    for b in ("probe_symphony_fmri", "probe_symphony_sc", "early fused"):
        print(f"  late fused - {b}: %+.3f [%+.3f, %+.3f]" % paired_difference(both, "probe_symphony_fused", b, n_boot))
    log = read_tsv(late / "setup-agnostic" / "training_log.tsv")
    for row in ("probe_symphony_fused", "permuted_probe_symphony_fused"):
        w = log.loc[log["variant"] == row, "w_fmri"]
        print(f"{row}: w_fmri per fold, value (count): " + ", ".join(
            f"{v:.1f} ({n})" for v, n in w.value_counts().sort_index().items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("late", type=Path)
    parser.add_argument("early", type=Path)
    args = parser.parse_args()
    main(args.late, args.early)
