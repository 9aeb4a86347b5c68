"""Fine-tuning steps: cached features, one set-up's cross-validation, the variant table.

``features_step`` writes, for every dataset window, its FC and the embeddings of the frozen
pretrained encoder and of a random encoder of the same shape. ``setup_step`` runs one
set-up (``cohort.setup_names``): for each repeat and outer fold it splits the training
subjects into fit and validation subjects, trains every variant with early stopping,
fits the baselines by nested CV, scores the test subjects (window scores averaged per
subject), and computes integrated gradients of the main model (concat fusion) on the
test windows. ``table_step`` gathers every set-up's metrics into one table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import baselines, evaluation
from ..datasets.regions import read_index
from ..io import atomic_path, read_tsv, write_tsv
from ..provenance import write_sidecar
from . import cohort as cohorts
from . import features as feats
from .trainer import TrainSettings, fit, predict

log = logging.getLogger(__name__)
FEATURE_FILES = ("samples.npy", "fc.npy", "ts_pretrained.npy", "ts_random.npy")
PERMUTED = "permuted_"  # prefix of the label-permuted controls
FUSED = ("concat", "sum", "cross_attention", "moe", "no_pretrain")  # variants with both branches


def features_step(dataset: str, model: str, coords: str, out_dir: str, seed: int = 0, device: str = "cpu") -> None:
    from ..atlas import load_labels_table

    index = read_index(dataset)
    samples = index["sample"].to_numpy(dtype=np.int64)
    xyz = load_labels_table(coords)[["x", "y", "z"]].to_numpy(dtype=np.float32)
    arrays = {
        "samples.npy": samples,
        "fc.npy": feats.dataset_fc(dataset, samples),
        "ts_pretrained.npy": feats.embed(feats.load_encoder(model, xyz, True, seed), dataset, samples, device=device),
        "ts_random.npy": feats.embed(feats.load_encoder(model, xyz, False, seed), dataset, samples, device=device),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with atomic_path(out / name) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
                np.save(fh, array)
        write_sidecar(out / name, "finetune_features", [f"{dataset}/index.tsv", f"{dataset}/samples.npy", model, coords],
                      parameters={"seed": seed, "fc": "Fisher z of Pearson r per window (|r| clipped at 0.999)",
                                  "embedding": "frozen encoder, pooled (BrainLM forward_head)"})


def _settings(section: Mapping[str, Any]) -> TrainSettings:
    return TrainSettings(**{k: section[k] for k in ("embed_dim", "resnet_width", "batch_size", "max_epochs",
                                                    "min_epochs", "patience", "lr", "weight_decay")},
                         device=section.get("device", "cpu"))


def setup_step(setup: str, dataset: str, features_dir: str, participants: str, model: str, coords: str,
               out_dir: str, section: Mapping[str, Any]) -> None:
    """Cross-validate every variant and baseline of ``section`` on one set-up; write its tables."""
    from ..atlas import load_labels_table
    from ..models.fmmtc import FMMTCWithEncoder
    from .attribution import integrated_gradients

    index = read_index(dataset)
    cohort = cohorts.load_cohort(participants, section["target"], section["task"], section["missing_labels"],
                                 subjects=sorted(index["subject"].unique()))
    fdir = Path(features_dir)
    samples = np.load(fdir / "samples.npy")
    row_of = {int(s): i for i, s in enumerate(samples)}
    windows = index[index["subject"].isin(cohort.labels.index)]
    rows_of = {s: np.array([row_of[int(i)] for i in g["sample"]]) for s, g in windows.groupby("subject")}
    fc = np.load(fdir / "fc.npy")
    ts = {"pretrained": np.load(fdir / "ts_pretrained.npy"), "random": np.load(fdir / "ts_random.npy")}
    y = np.zeros(len(samples))
    for s, rows in rows_of.items():
        y[rows] = cohort.labels[s]
    subject_fc = {s: fc[rows].mean(axis=0) for s, rows in rows_of.items()}
    settings = _settings(section)
    lut = load_labels_table(coords)
    region_names = lut["name"].tolist()
    # the frozen encoder, loaded once: integrated gradients run through it on every fold
    attribute = section["attribution"] and setup == "agnostic"
    frozen = feats.load_encoder(model, lut[["x", "y", "z"]].to_numpy(dtype=np.float32), True,
                                section["seed"]) if attribute else None
    data = np.load(Path(dataset) / "samples.npy", mmap_mode="r")
    site_col = section.get("site_column")

    preds, logs, fold_rows, ig_rows, ig_regions = [], [], [], [], []
    for repeat in range(section["repeats"]):
        seed = section["seed"] + repeat
        plan = cohorts.folds(cohort, setup, section["folds"], seed, section.get("drug_column"), site_col)
        for fold, (train, test) in enumerate(plan):
            fit_s, val_s = cohorts.inner_split(cohort, train, section["val_fraction"], seed)
            roles = (("fit+val", fit_s),) if fit_s == val_s else (("fit", fit_s), ("val", val_s))
            fold_rows += [{"repeat": repeat, "fold": fold, "subject": s, "role": role}
                          for role, group in (*roles, ("test", test)) for s in group]
            cat = lambda subjects: np.concatenate([rows_of[s] for s in subjects])  # noqa: E731
            fit_rows, val_rows, test_rows = cat(fit_s), cat(val_s), cat(test)
            test_subject = np.concatenate([[s] * len(rows_of[s]) for s in test])

            started = time.monotonic()
            log.info("set-up %s, repeat %d, fold %d/%d: %d fit, %d validation, %d test subjects", setup, repeat,
                     fold + 1, len(plan), len(fit_s), len(val_s), len(test))

            def record(variant: str, scores: np.ndarray, per_window: bool, info: dict, permutation: int = 0) -> None:
                frame = pd.DataFrame({"subject": test_subject if per_window else test, "score": scores})
                frame = frame.groupby("subject", as_index=False)["score"].mean()
                frame["label"] = cohort.labels.loc[frame["subject"]].to_numpy()
                preds.append(frame.assign(setup=setup, variant=variant, repeat=repeat, permutation=permutation,
                                          fold=fold))
                logs.append({"setup": setup, "variant": variant, "repeat": repeat, "permutation": permutation,
                             "fold": fold, **info})
                log.info("  %-18s done at %.0f s", variant, time.monotonic() - started)

            fc_stage = None  # staged fusion: this fold's fc_only model starts the fused variants' FC branch
            variants = list(section["variants"])
            if section.get("staged_fusion") and any(v in FUSED for v in variants):
                variants = ["fc_only"] + [v for v in variants if v != "fc_only"]
            for variant in variants:
                encoder = "random" if variant == "no_pretrain" else "pretrained"
                init = fc_stage if variant in FUSED else None
                model_, target, info = fit(variant, cohort.task, ts[encoder], fc, y, fit_rows, val_rows, settings,
                                           seed=seed * 1000 + fold, init_fc=init)
                if variant == "fc_only" and section.get("staged_fusion"):
                    fc_stage = model_
                    if variant not in section["variants"]:
                        continue
                record(variant, predict(model_, target, ts[encoder], fc, test_rows, settings), True, info)
                # attributions on the agnostic set-up only: its test subjects cover every site
                if variant == "concat" and attribute:
                    wrapped = FMMTCWithEncoder(frozen, model_)
                    windows_x = np.asarray(data[samples[test_rows]], dtype=np.float32)
                    a_ts, a_fc = integrated_gradients(wrapped, windows_x, fc[test_rows], section["ig_steps"],
                                                      device=settings.device)
                    for k, s in enumerate(test_subject):
                        site = cohort.table.loc[s, site_col] if site_col in cohort.table.columns else "all"
                        ig_rows.append({"setup": setup, "repeat": repeat, "fold": fold, "subject": s,
                                        "site": str(site), "ts": float(a_ts[k].sum()), "fc": float(a_fc[k].sum())})
                    ig_regions.append(np.stack([a_ts.sum(axis=0), a_fc.sum(axis=0)]))
                if variant == "concat" and section["permuted_control"]:
                    for k in range(section["permutations"]):
                        rng = np.random.default_rng([seed, fold, k])
                        y_perm = _permute_subject_labels(y, rows_of, fit_s + val_s, rng)
                        # the control stages its own FC branch on the permuted labels, like the real model
                        stage = None
                        if section.get("staged_fusion"):
                            stage, _, _ = fit("fc_only", cohort.task, ts[encoder], fc, y_perm, fit_rows, val_rows,
                                              settings, seed=seed * 1000 + fold)
                        model_, target, info = fit(variant, cohort.task, ts[encoder], fc, y_perm, fit_rows, val_rows,
                                                   settings, seed=seed * 1000 + fold, init_fc=stage)
                        record(PERMUTED + variant, predict(model_, target, ts[encoder], fc, test_rows, settings), True,
                               info, permutation=k)

            x_train = baselines.upper_triangle(np.stack([subject_fc[s] for s in train]))
            x_test = baselines.upper_triangle(np.stack([subject_fc[s] for s in test]))
            y_train = cohort.labels.loc[train].to_numpy()
            for name in section["baselines"]:
                scores, chosen = baselines.fit_predict(name, cohort.task, x_train, y_train, x_test, seed=seed)
                record(name, scores, False, chosen)
                if name == "logistic" and section["permuted_control"]:
                    for k in range(section["permutations"]):
                        perm = np.random.default_rng([seed, fold, k]).permutation(y_train)
                        scores, chosen = baselines.fit_predict(name, cohort.task, x_train, perm, x_test, seed=seed)
                        record(PERMUTED + name, scores, False, chosen, permutation=k)

    out = Path(out_dir)
    predictions = pd.concat(preds, ignore_index=True)[["setup", "variant", "repeat", "permutation", "fold", "subject",
                                                       "label", "score"]]
    metrics = evaluation.summarise(predictions, cohort.task, n_boot=section["bootstrap"], seed=section["seed"])
    tables = {"predictions.tsv": predictions, "metrics.tsv": metrics, "folds.tsv": pd.DataFrame(fold_rows),
              "training_log.tsv": pd.DataFrame(logs)}
    if ig_rows:
        modality = pd.DataFrame(ig_rows)
        by_site = modality.groupby(["setup", "site"], as_index=False)[["ts", "fc"]].sum()
        by_site["ts_share"] = by_site["ts"] / (by_site["ts"] + by_site["fc"])
        by_site["fc_share"] = 1 - by_site["ts_share"]
        total = np.sum(ig_regions, axis=0)  # (2, R)
        regions = pd.DataFrame({"region": np.arange(1, len(region_names) + 1), "name": region_names,
                                "ts": total[0], "fc": total[1]})
        regions["total"] = regions["ts"] / regions["ts"].sum() + regions["fc"] / regions["fc"].sum()
        regions = regions.sort_values("total", ascending=False, kind="stable")
        regions["rank"] = np.arange(1, len(regions) + 1)
        tables["attribution_modality.tsv"] = by_site
        tables["attribution_regions.tsv"] = regions
    inputs = [f"{dataset}/index.tsv", *(str(fdir / f) for f in FEATURE_FILES), participants, model]
    for name, frame in tables.items():
        write_tsv(out / name, frame)
        write_sidecar(out / name, "finetune", inputs, parameters={"setup": setup, "task": cohort.task,
                                                                 "dropped_unlabelled": list(cohort.dropped)},
                      config=dict(section))


def _permute_subject_labels(y: np.ndarray, rows_of: dict, subjects: list[str], rng: np.random.Generator) -> np.ndarray:
    """Shuffle labels across the training subjects (whole subjects, so windows stay together)."""
    labels = np.array([y[rows_of[s][0]] for s in subjects])
    out = y.copy()
    for s, label in zip(subjects, rng.permutation(labels)):
        out[rows_of[s]] = label
    return out


def table_step(metrics: list[str], out_tsv: str) -> None:
    """Every set-up's metrics in one table (the report's fine-tuning table)."""
    frame = pd.concat([read_tsv(m) for m in metrics], ignore_index=True)
    write_tsv(out_tsv, frame)
    write_sidecar(out_tsv, "finetune_table", metrics)
