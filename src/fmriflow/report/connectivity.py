"""Connectivity section: group-mean FC and the group difference, ordered by A424 region group,
and (demo data) how well the planted edges are recovered."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import draw_matrix, groups_text, robust_max
from .html import fmt, key_value_table, not_run, sources_html, table

_ORDER_NOTE = ("<p>Matrices are in A424 label order, which groups regions as cortex right (Glasser 1-180), cortex "
               "left (181-360), subcortex (361-396) and cerebellum (397-424); A424 ships no network assignment, "
               "so these region groups are the blocks shown.</p>")


def connectivity_section(fc, diff, diff_meta, recovery, regions, fc_path, diff_path, edges_path, figures) -> str:
    parts = [_ORDER_NOTE, figures.add(
        "fc-mean", lambda fig: draw_matrix(fig, fc, regions, vmax=1.0, label="Pearson r"), 7.5, 6.4,
        "Group-mean functional connectivity (Pearson r) over the runs that passed QC, regions in A424 label order"
        + groups_text(len(regions)) + "; grey: undefined (NaN).",
        [fc_path],
    )]
    if diff is None:
        parts.append("<p>No group difference was computed.</p>")
        return "\n".join(parts)
    switched_off = "GroupColumn" in diff_meta and not diff_meta["GroupColumn"]  # report.group_column: null
    if switched_off or not np.isfinite(diff).any():  # all NaN: no two groups to compare
        parts.append(not_run("group difference", not_run_reason(diff_meta)))
        if recovery is not None:
            parts.append(not_run("ground-truth recovery", "no group difference to compare the planted edges with"))
        return "\n".join(parts)
    if diff_meta:
        parts.append("<h3>Group comparison</h3>")
        parts.append(key_value_table(diff_meta, table_id="group-comparison"))
    vmax = robust_max(diff)
    contrast = contrast_text(diff_meta)
    parts.append(figures.add(
        "fc-groupdiff", lambda fig: draw_matrix(fig, diff, regions, vmax=vmax, label="difference of group means"),
        7.5, 6.4,
        "Difference of group-mean connectivity" + (f" ({contrast})" if contrast else "")
        + groups_text(len(regions)) + "; colour limits at the largest absolute difference; grey: undefined (NaN).",
        [diff_path],
    ))
    if recovery is not None:
        parts.append(_recovery_html(recovery, edges_path, diff_path))
    return "\n".join(parts)


def recovery(edges: pd.DataFrame, diff: np.ndarray) -> dict:
    """Planted vs observed difference at each planted edge, and its rank among all edges."""
    observed = diff[edges["pos_i"].to_numpy(), edges["pos_j"].to_numpy()]
    upper = diff[np.triu_indices(diff.shape[0], k=1)]
    magnitudes = np.abs(upper[np.isfinite(upper)])
    ranks = [1 + int((magnitudes > abs(v)).sum()) if np.isfinite(v) else np.nan for v in observed]
    same = [bool(np.sign(o) == np.sign(d)) if np.isfinite(o) and np.isfinite(d) else np.nan
            for o, d in zip(observed, edges["delta"].to_numpy(dtype=float))]
    out = edges.assign(observed=observed, rank=ranks, same_sign=same)
    n = len(out)
    finite_ranks = out["rank"].dropna()
    summary = {
        "n_planted": n,
        "n_edges": int(magnitudes.size),
        "n_in_top_n": int((finite_ranks <= n).sum()),
        "median_rank": float(finite_ranks.median()) if len(finite_ranks) else float("nan"),
        "n_same_sign": int(sum(s is True for s in same)),
    }
    return {"edges": out, "summary": summary}


def _recovery_html(rec, edges_path, diff_path) -> str:
    s = rec["summary"]
    headers = ["Label i", "Label j", "Region i", "Region j", "r non-responder", "r responder", "Planted delta",
               "Observed difference", "Rank by |observed|", "Same sign"]
    rows = [(int(e.region_i), int(e.region_j), e.name_i, e.name_j, fmt(e.corr_nonresponder, ".3f"),
             fmt(e.corr_responder, ".3f"), fmt(e.delta, ".4f"), fmt(e.observed, ".4f"),
             fmt(e.rank, "d"), "n/a" if pd.isna(e.same_sign) else ("yes" if e.same_sign else "no"))
            for e in rec["edges"].itertuples(index=False)]
    return "\n".join([
        "<h3>Ground-truth recovery</h3>",
        f"<p>{s['n_in_top_n']} of {s['n_planted']} planted edges rank among the top {s['n_planted']} of "
        f"{s['n_edges']} edges by absolute observed difference (median rank {fmt(s['median_rank'], '.0f')}); "
        f"the observed sign matches the planted one for {s['n_same_sign']} of {s['n_planted']}.</p>",
        table(headers, rows, table_id="ground-truth"),
        f'<div class="source">Planted: {sources_html([edges_path])}; observed: {sources_html([diff_path])}.</div>',
    ])


def not_run_reason(meta) -> str:
    """Why the group difference is undefined: the config key when no column was set, else the step's note."""
    if "GroupColumn" in meta and not meta["GroupColumn"]:
        return "report.group_column is null"
    return str(meta.get("Note") or "the difference is undefined (NaN) for every pair of regions")


def contrast_text(meta) -> str:
    if meta.get("Contrast"):
        return str(meta["Contrast"])
    levels = meta.get("Levels")
    return f"{meta.get('GroupColumn') or 'group'}: {levels}" if levels else ""
