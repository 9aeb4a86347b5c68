"""Plain-text summary of a fine-tuning folder: the variant table and the attributions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_tsv

HEADLINE = {"classification": ("mcc", "auroc", "balanced_accuracy"), "regression": ("pearson_r", "mae")}


def planted_attribution(regions: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How strongly attribution points at the regions a known effect was planted in.

    ``regions`` is a set-up's ``attribution_regions.tsv`` (``region``, ``total``); ``truth``
    has ``index`` and a boolean ``planted`` (the demo's ``ground_truth/regions.tsv``).
    Returns the Mann-Whitney AUC (the chance that a planted region has more attribution
    than another region; 0.5 is no preference), its one-sided p-value, and the share of
    attribution on planted regions next to their share of the regions.
    """
    from scipy.stats import mannwhitneyu

    planted = truth.set_index("index")["planted"].astype(bool)
    missing = set(regions["region"]) - set(planted.index)
    if missing:
        raise ValueError(f"the truth table has no row for regions {sorted(missing)[:5]}")
    is_planted = planted.loc[regions["region"]].to_numpy()
    total = regions["total"].to_numpy(dtype=float)
    a, b = total[is_planted], total[~is_planted]
    if not len(a) or not len(b):
        raise ValueError("the truth table must mark some regions planted and some not")
    test = mannwhitneyu(a, b, alternative="greater")
    return {"n_planted": int(len(a)), "auc": float(test.statistic / (len(a) * len(b))), "p_value": float(test.pvalue),
            "attribution_share": float(a.sum() / total.sum()), "region_share": float(len(a) / len(total))}


def format_summary(root: str | Path, top_regions: int = 10, truth: str | Path | None = None) -> str:
    """Every set-up's variants (pooled metric with bootstrap 95% CI, fold mean +- sd).

    With ``truth`` (a table of ``index`` and ``planted``, e.g. the demo's
    ``ground_truth/regions.tsv``) the attributions are also compared with the planted regions.
    """
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
        if truth is not None:
            p = planted_attribution(read_tsv(modality.with_name("attribution_regions.tsv")), read_tsv(truth))
            lines.append(f"planted regions ({p['n_planted']}): AUC {p['auc']:.2f} that one outranks another region "
                         f"(Mann-Whitney p = {p['p_value']:.1e}); {p['attribution_share']:.0%} of attribution "
                         f"on {p['region_share']:.0%} of regions")
        lines.append("")
    return "\n".join(lines)
