"""Plain-text summary of a fine-tuning folder: the variant table and the attributions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_tsv

HEADLINE = {"classification": ("mcc", "auroc", "balanced_accuracy"), "regression": ("pearson_r", "mae")}


def format_summary(root: str | Path, top_regions: int = 10) -> str:
    """Every set-up's variants (pooled metric with bootstrap 95% CI, fold mean +- sd)."""
    root = Path(root)
    table = read_tsv(root / "variants.tsv")
    task = "classification" if "mcc_pooled" in table.columns else "regression"
    lines = []
    for setup, frame in table.groupby("setup", sort=False):
        lines.append(f"set-up {setup} ({int(frame['n_subjects'].max())} subjects, "
                     f"{int(frame['n_folds'].max())} folds x repeats)")
        rows = []
        for _, r in frame.iterrows():
            cells = {"variant": r["variant"]}
            for m in HEADLINE[task]:
                cells[m] = (f"{r[f'{m}_pooled']:+.2f} [{r[f'{m}_ci_low']:+.2f}, {r[f'{m}_ci_high']:+.2f}]"
                            f" fold {r[f'{m}_mean']:+.2f}+-{r[f'{m}_sd']:.2f}")
            rows.append(cells)
        lines.append(pd.DataFrame(rows).to_string(index=False))
        lines.append("")
    for modality in sorted(root.glob("setup-*/attribution_modality.tsv")):
        shares = read_tsv(modality)
        lines.append(f"integrated gradients, {modality.parent.name}: share of |attribution| by site")
        lines.append(shares[["site", "ts_share", "fc_share"]].to_string(index=False, float_format="%.2f"))
        regions = read_tsv(modality.with_name("attribution_regions.tsv")).head(top_regions)
        lines.append(f"top {top_regions} regions: " + ", ".join(regions["name"]))
        lines.append("")
    return "\n".join(lines)
