"""Pretraining and Fine-tuning sections: training curves; every variant and baseline with its
CI, ROC curves and confusion matrices from the per-subject predictions; what the model relied on
(integrated-gradients modality shares and the top regions on a glass brain).

ROC points and confusion counts come from ``fmriflow.evaluation`` (``roc_points``,
``confusion``), computed on ``predictions.tsv`` (subject-level out-of-fold scores, pooled
over folds and repeats as the metrics' ``*_pooled`` columns are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluation import confusion, roc_points
from ..naming import FINETUNE_SYMPHONY_SUBJECTS
from .encoder import encoder_html
from .html import esc, fmt, not_run, sources_html, table
from .inputs import config_get, read_csv, read_table
from .recipes import recipes_html

PathLike = str | Path

TOP_REGIONS = 20  # regions drawn on the brain and listed
_DEFAULT_BASELINES = ("logistic", "ridge")
_CONTROL_PREFIX = "permuted_"
_PROBE, _PROBE_CONTROL = "probe", "probe_random"  # fmriflow.finetune.probe.PROBES
_EXTRA_PROBE = "probe_"  # other encoders' rows: BrainSymphony's (probe_symphony_*), the recipes' (probe_<name>)
# (a recipe's random-encoder control is probe_random_<name>: recipe names hold no '_')
_HEADLINE = {"classification": (("auroc", "AUROC"), ("balanced_accuracy", "Balanced accuracy"), ("mcc", "MCC")),
             "regression": (("pearson_r", "Pearson r"), ("mae", "MAE"), ("mse", "MSE"))}


# ----------------------------------------------------------------------------- pretraining


def pretraining_section(metrics_path: PathLike | None, voxel_metrics: Mapping[str, PathLike], config, figures,
                        encoder_card: PathLike | None = None) -> str:
    """Training curves; with ``encoder_card`` (``finetune.encoder``'s model_card.json) and no pretraining
    here, the card of the encoder that was pretrained elsewhere."""
    parts, curves, sources = [], {}, []
    if metrics_path is None and encoder_card is not None:
        parts.append(encoder_html(encoder_card, config))
    elif metrics_path is None:
        why = "pretrain.enabled is false" if config_get(config, "pretrain", "enabled") is False else "no metrics.csv was given"
        parts.append(not_run("pretraining", why))
    else:
        model = config_get(config, "pretrain", "model") or "model"
        curves[f"pretrain {model}"] = _read_metrics(metrics_path)
        sources.append(metrics_path)
    for name, path in voxel_metrics.items():
        curves[name] = _read_metrics(path)
        sources.append(path)
    if curves:
        parts += _curves_html(curves, sources, figures)
    if not voxel_metrics and config_get(config, "voxel", "enabled") is False:
        parts.append(not_run("voxel-level models (BrainMT, NeuroSTORM)", "voxel.enabled is false"))
    return "\n".join(parts)


def _curves_html(curves: dict[str, pd.DataFrame], sources: list, figures) -> list[str]:
    rows = []
    for name, frame in curves.items():
        val = frame.dropna(subset=["val_loss"])
        train = frame.dropna(subset=["train_loss"])
        best = val.loc[val["val_loss"].idxmin()] if len(val) else None
        rows.append((name, int(frame["step"].max()), fmt(train["train_loss"].iloc[-1] if len(train) else None, ".4f"),
                     fmt(val["val_loss"].iloc[0] if len(val) else None, ".4f"),
                     fmt(val["val_loss"].iloc[-1] if len(val) else None, ".4f"),
                     "n/a" if best is None else f"{best['val_loss']:.4f} at step {int(best['step'])}"))
    return [
        "<p>Masked-autoencoder loss (mean squared error on the masked patches) of the training batches and of "
        "the validation subjects, and the learning rate, by optimiser step.</p>",
        table(["Run", "Steps", "Last train loss", "First val loss", "Last val loss", "Best val loss"], rows,
              table_id="pretrain-summary"),
        figures.add("pretrain-curves", lambda fig: _draw_curves(fig, curves), 10, 3.6,
                    "Training curves: training loss (lines), validation loss (dots) and learning rate by step.", sources),
    ]


def _read_metrics(path: PathLike) -> pd.DataFrame:
    frame = read_csv(path, ["step", "train_loss", "val_loss"])
    if frame.empty:
        raise InputError(path, "metrics table has no rows: the training wrote no step")
    return frame


def _draw_curves(fig, curves: dict[str, pd.DataFrame]) -> None:
    loss, lr = fig.subplots(1, 2, width_ratios=[2, 1])
    for k, (name, frame) in enumerate(curves.items()):
        colour = f"C{k}"
        train = frame.dropna(subset=["train_loss"])
        val = frame.dropna(subset=["val_loss"])
        loss.plot(train["step"], train["train_loss"], color=colour, lw=1.2, label=f"{name} train")
        loss.plot(val["step"], val["val_loss"], "o", color=colour, ms=4, label=f"{name} val")
        if "lr" in frame and frame["lr"].notna().any():
            lrs = frame.dropna(subset=["lr"])
            lr.plot(lrs["step"], lrs["lr"], color=colour, lw=1.2, label=name)
    loss.set_xlabel("step")
    loss.set_ylabel("loss")
    loss.legend(fontsize=7, frameon=False)
    lr.set_xlabel("step")
    lr.set_ylabel("learning rate")


# ----------------------------------------------------------------------------- fine-tuning


def finetune_section(table_path: PathLike | None, predictions: Sequence[PathLike], atlas_labels: PathLike | None,
                     config, figures, recipes: Mapping[str, PathLike] | None = None) -> str:
    """``recipes``: each released model's ``recipe.json`` by name (config ``recipes``), shown with its probe rows."""
    if table_path is None:
        why = "finetune.enabled is false" if config_get(config, "finetune", "enabled") is False else "no variant table was given"
        return not_run("fine-tuning and evaluation", why)
    variants = read_table(table_path, ["setup", "variant", "n_subjects", "n_folds"], dtype={"setup": str})
    task = "classification" if "auroc_pooled" in variants.columns else "regression"
    baselines = set(config_get(config, "finetune", "baselines") or _DEFAULT_BASELINES)
    target = config_get(config, "finetune", "target") or "the target"
    parts = [
        f"<p>Prediction of <code>{esc(target)}</code> ({task}), cross-validated by subject: every FMMTC variant, "
        "the FC baselines, the frozen probes (<code>probe</code>: the encoder's embeddings, averaged per subject, "
        "into the baselines' nested-CV linear model; <code>probe_random</code>: the same on a random encoder of the "
        "same shape, its control) and the permuted-label controls (which should score at chance) for every set-up. "
        "Pooled: the metric over every out-of-fold subject prediction, with a subject bootstrap 95% CI; "
        "folds: mean \u00b1 SD over folds.</p>",
        _variants_table(variants, task, baselines),
        f'<div class="source">Table: {sources_html([table_path])}</div>',
        _symphony_html(predictions),
        recipes_html(recipes or {}, config_get(config, "finetune", "recipe_variants") or ()),
    ]
    preds = _read_predictions(predictions)
    if preds is None:
        parts.append(not_run("ROC curves and confusion matrices", "no predictions were given"))
    elif task == "classification":
        parts.append(_classification_html(preds, predictions, figures))
    else:
        parts.append(_regression_html(preds, predictions, figures))
    parts.append("<h3>What the model relied on</h3>")
    parts.append(_attribution_html(predictions, atlas_labels, config, figures))
    return "\n".join(parts)


def _symphony_html(predictions: Sequence[PathLike]) -> str:
    """Which subjects BrainSymphony's fused row saw with a connectome and which took the fMRI-only path."""
    path = next((f for f in attribution_files(predictions) if f.endswith(FINETUNE_SYMPHONY_SUBJECTS)), None)
    if path is None:
        return ""
    subjects = read_table(path, ["subject", "connectome", "path", "gate_functional"], dtype={"subject": str})
    has = subjects["connectome"].astype(str).str.lower() == "true"
    text = (f"<p>BrainSymphony rows (<code>probe_symphony_fmri</code>: time series only; <code>probe_symphony_sc"
            f"</code>: structural connectome only; <code>probe_symphony_fused</code>: both, fused as "
            f"<code>brainsymphony.fusion</code> says: "
            f"the two probes' scores averaged (mean), weighed by inner CV (late) or one probe on the gate's mix "
            f"(early)): "
            f"{int(has.sum())} of {len(subjects)} subjects have a structural connectome")
    if (~has).any():
        text += (f"; {int((~has).sum())} without one (sub-{', sub-'.join(map(esc, subjects.loc[~has, 'subject']))}) "
                 "take the fMRI-only path: their fused embedding is the functional one, and "
                 "<code>probe_symphony_sc</code> leaves them out (its Subjects column)")
    gate = pd.to_numeric(subjects.loc[has, "gate_functional"], errors="coerce").dropna()
    if len(gate):
        text += (f". The gate's functional share (1: all time series, 0: all structure), mean over those "
                 f"subjects (each over its windows): {gate.mean():.3f} (range {gate.min():.3f}-{gate.max():.3f})")
    return text + f'.</p><div class="source">Subjects: {sources_html([path])}</div>'


def _kind(variant: str, baselines: set[str]) -> str:
    if variant.startswith(_CONTROL_PREFIX) or variant == _PROBE_CONTROL or variant.startswith(_PROBE_CONTROL + "_"):
        return "control"
    if variant == _PROBE or variant.startswith(_EXTRA_PROBE):
        return "probe"
    return "baseline" if variant in baselines else "model"


def _variants_table(variants: pd.DataFrame, task: str, baselines: set[str]) -> str:
    metrics = [m for m in _HEADLINE[task] if f"{m[0]}_pooled" in variants.columns]
    headers = ["Set-up", "Variant", "Kind", "Subjects", "Folds"]
    for _, label in metrics:
        headers += [f"{label} pooled [95% CI]", f"{label} folds"]
    rows, classes = [], []
    for r in variants.to_dict("records"):
        row = [r["setup"], r["variant"], _kind(r["variant"], baselines), r["n_subjects"], r["n_folds"]]
        for key, _ in metrics:
            row.append(f"{fmt(r[f'{key}_pooled'], '.3f')} [{fmt(r.get(f'{key}_ci_low'), '.3f')}, "
                       f"{fmt(r.get(f'{key}_ci_high'), '.3f')}]")
            row.append(f"{fmt(r.get(f'{key}_mean'), '.3f')} \u00b1 {fmt(r.get(f'{key}_sd'), '.3f')}")
        rows.append(row)
        classes.append(_kind(r["variant"], baselines))
    return table(headers, rows, table_id="finetune-variants", scroll=True, row_classes=classes)


def _read_predictions(paths: Sequence[PathLike]) -> pd.DataFrame | None:
    frames = []
    for path in paths:
        frame = read_table(path, ["setup", "variant", "subject", "label", "score"], dtype={"setup": str, "subject": str})
        if frame.empty:
            raise InputError(path, "predictions table has no rows")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None


def _classification_html(preds: pd.DataFrame, paths, figures) -> str:
    setups = list(dict.fromkeys(preds["setup"]))
    curves = {}
    rows = []
    for setup in setups:
        for variant, frame in preds[preds["setup"] == setup].groupby("variant", sort=False):
            fpr, tpr, auc = roc_points(frame["label"], frame["score"])
            cm = confusion(frame["label"], frame["score"])
            curves[(setup, variant)] = (fpr, tpr, auc)
            rows.append((setup, variant, len(frame), fmt(auc, ".3f"), *cm.ravel().tolist()))
    parts = [
        figures.add("finetune-roc", lambda fig: _draw_roc(fig, setups, curves), min(14.0, 3.4 * len(setups) + 1), 3.8,
                    "ROC curves of every variant per set-up, from the pooled out-of-fold subject scores "
                    "(AUC in the legend); diagonal: chance.", list(paths)),
        table(["Set-up", "Variant", "Predictions", "AUROC", "TN", "FP", "FN", "TP"], rows, table_id="roc-confusion",
              scroll=True),
    ]
    primary = "agnostic" if "agnostic" in setups else setups[0]
    matrices = {variant: confusion(f["label"], f["score"])
                for variant, f in preds[preds["setup"] == primary].groupby("variant", sort=False)}
    source = [p for p in paths if Path(p).parent.name == f"setup-{primary}"] or list(paths)
    parts.append(figures.add(
        "finetune-confusion", lambda fig: _draw_confusion(fig, matrices), min(14.0, 2.2 * len(matrices) + 0.6), 2.6,
        f"Confusion matrices of set-up {primary} (rows: true label, columns: predicted at score 0.5; counts of "
        "subject predictions pooled over folds and repeats).", source))
    return "\n".join(parts)


def _regression_html(preds: pd.DataFrame, paths, figures) -> str:
    setups = list(dict.fromkeys(preds["setup"]))
    primary = "agnostic" if "agnostic" in setups else setups[0]
    frames = dict(tuple(preds[preds["setup"] == primary].groupby("variant", sort=False)))
    source = [p for p in paths if Path(p).parent.name == f"setup-{primary}"] or list(paths)
    return figures.add("finetune-scatter", lambda fig: _draw_scatter(fig, frames), min(14.0, 2.6 * len(frames) + 0.6),
                       2.8, f"Predicted against true values per variant, set-up {primary} (pooled out-of-fold "
                       "subject predictions; line: identity).", source)


def _draw_roc(fig, setups, curves) -> None:
    axes = np.atleast_1d(fig.subplots(1, len(setups), sharey=True))
    for ax, setup in zip(axes, setups):
        for k, ((s, variant), (fpr, tpr, auc)) in enumerate((key, v) for key, v in curves.items() if key[0] == setup):
            style = ":" if variant.startswith(_CONTROL_PREFIX) else "-"
            ax.plot(fpr, tpr, style, drawstyle="default", color=f"C{k % 10}", lw=1.2, label=f"{variant} {auc:.2f}")
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        ax.set_title(setup)
        ax.set_xlabel("false-positive rate")
        ax.set_aspect("equal")
        ax.legend(fontsize=6, frameon=False, loc="lower right")
    axes[0].set_ylabel("true-positive rate")


def _draw_confusion(fig, matrices: dict[str, np.ndarray]) -> None:
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (variant, cm) in zip(axes, matrices.items()):
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if count > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["0", "1"])
        ax.set_yticks([0, 1], ["0", "1"])
        ax.set_title(variant, fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0].set_ylabel("true")


def _draw_scatter(fig, frames: dict[str, pd.DataFrame]) -> None:
    axes = np.atleast_1d(fig.subplots(1, len(frames), sharey=True))
    for ax, (variant, frame) in zip(axes, frames.items()):
        ax.scatter(frame["label"], frame["score"], s=8)
        lo = float(min(frame["label"].min(), frame["score"].min()))
        hi = float(max(frame["label"].max(), frame["score"].max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--")
        ax.set_title(variant, fontsize=8)
        ax.set_xlabel("true")
    axes[0].set_ylabel("predicted")


# ----------------------------------------------------------------------------- attribution


def attribution_files(predictions: Sequence[PathLike]) -> list[str]:
    """The attribution tables written beside a set-up's predictions (the agnostic set-up only), and
    BrainSymphony's subject table (which subjects had a connectome)."""
    out = []
    for path in predictions:
        for name in ("attribution_modality.tsv", "attribution_regions.tsv", FINETUNE_SYMPHONY_SUBJECTS):
            candidate = Path(path).with_name(name)
            if candidate.is_file():
                out.append(str(candidate))
    return out


def _attribution_html(predictions, atlas_labels, config, figures) -> str:
    files = attribution_files(predictions)
    modality = next((f for f in files if f.endswith("attribution_modality.tsv")), None)
    regions_path = next((f for f in files if f.endswith("attribution_regions.tsv")), None)
    if modality is None or regions_path is None:
        why = ("finetune.attribution is false" if config_get(config, "finetune", "attribution") is False
               else "no attribution tables beside the predictions")
        return not_run("integrated-gradients attribution", why)
    shares = read_table(modality, ["site", "ts_share", "fc_share"], dtype={"site": str})
    regions = read_table(regions_path, ["region", "name", "ts", "fc", "total", "rank"]).sort_values("rank")
    top = regions.head(TOP_REGIONS)
    parts = [
        "<p>Integrated gradients of the concat FMMTC model on the test windows of the agnostic set-up: the share of "
        "|attribution| on the time-series branch against the FC branch, per site, and the regions with the largest "
        "attribution (each modality's attribution normalised to sum 1, then added).</p>",
        figures.add("attribution-modality", lambda fig: _draw_shares(fig, shares), max(4.0, 0.9 * len(shares) + 2), 3.0,
                    "Share of |integrated gradients| on time series (ts) and FC per site.", [modality]),
    ]
    if atlas_labels is not None:
        lut = read_table(atlas_labels, ["index", "x", "y", "z"])
        coords = lut.set_index("index").loc[top["region"].to_numpy(), ["x", "y", "z"]].to_numpy(dtype=float)
        values = top["total"].to_numpy(dtype=float)
        parts.append(figures.add(
            "attribution-brain", lambda fig: _draw_brain(fig, coords, values), 11, 3.2,
            f"The {len(top)} regions with the largest attribution at their A424 centroid (MNI mm), colour and size by "
            "attribution (nilearn glass brain).", [regions_path, atlas_labels], layout=None))
    else:
        parts.append(not_run("brain plot of the top regions", "no atlas look-up table with coordinates was given"))
    rows = [(int(r["rank"]), int(r["region"]), r["name"], fmt(r["ts"], ".4g"), fmt(r["fc"], ".4g"), fmt(r["total"], ".4f"))
            for r in top.to_dict("records")]
    parts.append(table(["Rank", "Label", "Region", "|IG| time series", "|IG| FC", "Combined share"], rows,
                       table_id="top-regions"))
    parts.append(f'<div class="source">Tables: {sources_html([modality, regions_path])}</div>')
    return "\n".join(parts)


def _draw_shares(fig, shares: pd.DataFrame) -> None:
    ax = fig.subplots()
    x = np.arange(len(shares))
    ts = shares["ts_share"].to_numpy(dtype=float)
    ax.bar(x, ts, color="#4c72b0", label="time series")
    ax.bar(x, shares["fc_share"].to_numpy(dtype=float), bottom=ts, color="#dd8452", label="FC")
    ax.set_xticks(x, shares["site"].tolist(), fontsize=8)
    ax.set_xlabel("site")
    ax.set_ylabel("share of |attribution|")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncols=2)


def _draw_brain(fig, coords: np.ndarray, values: np.ndarray) -> None:
    from nilearn import plotting

    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    plotting.plot_markers(values, coords, node_size=10 + 40 * values / top, node_cmap="YlOrRd", node_vmin=0,
                          node_vmax=top, display_mode="lzry", figure=fig, colorbar=True)
