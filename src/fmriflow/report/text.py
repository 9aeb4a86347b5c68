"""Text alignment section (issue 22): the vq-align runs (aligned and its ablation without the
domain classifier) at their last evaluation, and the language model's answers scored against
predicting the training mean beside the ridge heads, with their bootstrap CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .html import esc, fmt, sources_html, table
from .inputs import read_csv, read_table

PathLike = str | Path
VQ_COLUMNS = ("step", "recon_r2", "disc_acc", "perplexity", "code_usage")
LM_COLUMNS = ("predictor", "mae", "mae_ci_low", "mae_ci_high", "mae_mean_baseline", "mae_difference",
              "mae_difference_ci_low", "mae_difference_ci_high", "n_subjects", "unparseable_answers", "windows")


def text_section(files: Mapping[str, PathLike]) -> str:
    """``files``: vq-align ``metrics.csv`` by run name, and ``lm`` -> ``lm_metrics.tsv`` (optional)."""
    parts, rows = [], []
    for name, path in files.items():
        if name == "lm":
            continue
        evaluations = read_csv(path, VQ_COLUMNS).dropna(subset=["recon_r2"])
        last, late = evaluations.iloc[-1], evaluations["disc_acc"].iloc[-4:]
        rows.append((name, int(last["step"]), fmt(last["recon_r2"], ".3f"), fmt(last["disc_acc"], ".3f"),
                     f"{late.min():.2f}-{late.max():.2f}", fmt(last["perplexity"], ".1f"), fmt(last["code_usage"], ".2f")))
    if rows:
        parts += ["<p>vq-align on the validation windows at the last evaluation: reconstruction R^2, the domain "
                  "classifier's balanced accuracy (0.5: it cannot tell fMRI codes from text tokens), codebook "
                  "perplexity and the share of codes in use.</p>",
                  table(["Run", "Steps", "R^2", "Discriminator", "Last 4 evaluations", "Perplexity", "Codes used"], rows,
                        table_id="text-vq")]
    if "lm" in files:
        lm = read_table(files["lm"], LM_COLUMNS)

        def ci(row, key, spec):
            return f"{fmt(row[key], spec)} [{fmt(row[key + '_ci_low'], spec)}, {fmt(row[key + '_ci_high'], spec)}]"

        target = esc(lm["target"].iloc[0]) if "target" in lm.columns and len(lm) else "target"
        parts += [f"<p>Held-out subjects' {target} as answered by the language model (lm: the median of "
                  "numbers parsed from answers sampled from it; lm_greedy: the mean of its greedy answers over windows) "
                  "and by ridge regression on the subjects' code histograms, against predicting the training mean; "
                  "95% bootstrap CIs over subjects; a difference below 0 is better than the mean.</p>",
                  table(["Predictor", "MAE", "Training-mean MAE", "Difference", "Subjects", "Unparseable answers"],
                        [(r["predictor"], ci(r, "mae", ".2f"), fmt(r["mae_mean_baseline"], ".2f"),
                          ci(r, "mae_difference", "+.2f"), int(r["n_subjects"]),
                          f"{int(r['unparseable_answers'])} of {_answers(r)}") for _, r in lm.iterrows()],
                        table_id="text-lm")]
    parts.append(f"<p>Sources: {sources_html(list(files.values()))}</p>")
    return "\n".join(parts)


def _answers(row) -> int:
    """How many answers a predictor's unparseable count is out of: its sampled answers where it drew
    some (the language model's median of samples), else one a window."""
    answers = row.get("answers")
    return int(answers) if answers is not None and answers == answers and answers > 0 else int(row["windows"])
