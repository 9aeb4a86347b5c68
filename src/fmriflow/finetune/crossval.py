"""One set-up's cross-validation, fold by fold: the variants, the baselines and their controls.

``load_inputs`` reads the cohort and the cached features once. ``make_fold`` turns one outer
fold's subjects into fit, validation and test window rows. ``run_fold`` trains every variant
(early stopping on the validation subjects), fits the baselines (nested CV inside the
training subjects), probes the frozen encoders' embeddings (``probe``; nested CV as the baselines),
and refits the label-permuted controls of ``concat`` and ``logistic``
(``permuted_controls``, one routine for both). Each released model's recipe (``recipe_fusion``)
adds its own FMMTC variants (``finetune.recipe_variants``, rows ``<variant>_<name>``), its embeddings
as the time-series branch, on the same folds and seeds, ``concat_<name>`` with the same permuted
control. ``Results`` gathers every test subject's score (window scores averaged per subject) and the
training logs.

Seeds: the fold plan, inner split and baselines use the repeat's seed (``seed + repeat``),
every network fit ``seed * 1000 + fold``, permutation ``k`` of a fold ``[seed, fold, k]``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .. import baselines, evaluation
from ..datasets.regions import SAMPLES, read_index
from ..errors import InputError, SettingError
from ..models.fmmtc import FMMTC
from ..naming import FINETUNE_FEATURES
from . import cohort as cohorts
from . import probe as probes
from . import fusion, recipe_fusion, recipe_probe, symphony
from .settings import FinetuneSettings
from .trainer import fit, predict

log = logging.getLogger(__name__)
PERMUTED = "permuted_"  # prefix of the label-permuted controls
FUSED = ("concat", "sum", "cross_attention", "moe", "no_pretrain")  # variants with both branches
FUSIONS = ("mean", "late", "early")  # brainsymphony.fusion


@dataclass(frozen=True)
class Inputs:
    """The labelled cohort and its cached per-window features."""

    cohort: cohorts.Cohort
    samples: np.ndarray  # dataset sample of every feature row
    rows_of: dict[str, np.ndarray]  # feature rows of each labelled subject's windows
    fc: np.ndarray
    ts: dict[str, np.ndarray]  # embeddings of the 'pretrained' and the 'random' encoder
    y: np.ndarray  # label of every feature row (0 for unlabelled subjects' rows)
    subject_fc: dict[str, np.ndarray]  # mean window FC per subject (the baselines' input)
    subject_ts: dict[str, dict[str, np.ndarray]]  # per encoder, mean window embedding per subject (the probes')
    # frozen-probe rows of other encoders -> subject -> mean embedding ({} when none ran): BrainSymphony's
    # (fmriflow.finetune.symphony.PROBES) and the released models' recipes (fmriflow.finetune.recipe_probe)
    subject_extra: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    # brainsymphony.fusion: how the fused BrainSymphony row combines the modalities (mean: the unimodal probes'
    # scores averaged; late: weighted by inner CV, fmriflow.finetune.fusion; early: one probe on the fused features)
    symphony_fusion: str = "mean"
    # each released model's recipe embeddings on these rows, the time-series branch of its variants ({}: none)
    recipes: dict[str, recipe_fusion.RecipeFeatures] = dataclasses.field(default_factory=dict)


def load_inputs(dataset: str, features_dir: str, participants: str, settings: FinetuneSettings,
                symphony_dir: str | None = None, recipe_dirs: dict[str, dict[str, str]] | None = None,
                symphony_fusion: str = "mean") -> Inputs:
    """The cohort and its features; ``symphony_dir`` / ``recipe_dirs`` (recipe name -> encoder ('pretrained',
    'random') -> its embeddings' folder): the probe rows of BrainSymphony and of the released models'
    recipes, and the recipes' variants, when they ran; ``symphony_fusion``: brainsymphony.fusion (``Inputs``)."""
    if symphony_fusion not in FUSIONS:
        raise InputError("brainsymphony.fusion", f"must be one of {list(FUSIONS)}; got {symphony_fusion!r}")
    unknown = [v for v in settings.recipe_variants if v not in recipe_fusion.VARIANTS]
    if unknown:  # the schema checks the workflow's config; this, a section given to the library
        raise SettingError("finetune.recipe_variants", f"'recipe_variants' must be one of {recipe_fusion.VARIANTS}; "
                                                       f"{unknown[0]!r} was provided")
    index = read_index(dataset)
    cohort = cohorts.load_cohort(participants, settings.target, settings.task, settings.missing_labels,
                                 subjects=sorted(index["subject"].unique()))
    fdir = Path(features_dir)
    samples = np.load(fdir / FINETUNE_FEATURES["samples"])
    row_of = {int(s): i for i, s in enumerate(samples)}
    windows = index[index["subject"].isin(cohort.labels.index)]
    rows_of = {s: np.array([row_of[int(i)] for i in g["sample"]]) for s, g in windows.groupby("subject")}
    fc = np.load(fdir / FINETUNE_FEATURES["fc"])
    ts = {"pretrained": np.load(fdir / FINETUNE_FEATURES["ts_pretrained"]),
          "random": np.load(fdir / FINETUNE_FEATURES["ts_random"])}
    y = np.zeros(len(samples))
    for s, rows in rows_of.items():
        y[rows] = cohort.labels[s]
    subject_fc = {s: fc[rows].mean(axis=0) for s, rows in rows_of.items()}
    subject_ts = {encoder: probes.subject_embeddings(array, rows_of) for encoder, array in ts.items()}
    extra = {} if symphony_dir is None else symphony.load_subject_embeddings(symphony_dir, samples, rows_of)
    extra.update(recipe_probe.load_recipe_embeddings(recipe_dirs or {}, list(rows_of)))
    recipes = {}
    if recipe_dirs and settings.recipe_variants:
        window = np.load(Path(dataset) / SAMPLES, mmap_mode="r").shape[2]
        recipes = recipe_fusion.load_recipe_features(recipe_dirs, index, samples, window)
    return Inputs(cohort, samples, rows_of, fc, ts, y, subject_fc, subject_ts, extra, symphony_fusion, recipes)


@dataclass(frozen=True)
class Fold:
    """One outer fold of one repeat: its subjects and their window rows."""

    setup: str
    repeat: int
    index: int
    seed: int  # the repeat's seed
    train: list[str]
    test: list[str]
    fit: list[str]
    val: list[str]
    fit_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    test_subject: np.ndarray  # the subject of every test row
    started: float  # time.monotonic() at the fold's start, for the log

    @property
    def fit_seed(self) -> int:
        return self.seed * 1000 + self.index

    def roles(self) -> list[dict]:
        """One row per subject and role (fit, val, or fit+val when they coincide; test)."""
        roles = (("fit+val", self.fit),) if self.fit == self.val else (("fit", self.fit), ("val", self.val))
        return [{"repeat": self.repeat, "fold": self.index, "subject": s, "role": role}
                for role, group in (*roles, ("test", self.test)) for s in group]


def make_fold(inputs: Inputs, setup: str, repeat: int, index: int, seed: int, train: list[str], test: list[str],
              val_fraction: float) -> Fold:
    fit_s, val_s = cohorts.inner_split(inputs.cohort, train, val_fraction, seed)

    def cat(subjects):
        return np.concatenate([inputs.rows_of[s] for s in subjects])

    test_subject = np.concatenate([[s] * len(inputs.rows_of[s]) for s in test])
    return Fold(setup, repeat, index, seed, train, test, fit_s, val_s, cat(fit_s), cat(val_s), cat(test),
                test_subject, time.monotonic())


class Results:
    """Subject-level test predictions, training logs and fold membership, in the order made."""

    def __init__(self, cohort: cohorts.Cohort):
        self.cohort = cohort
        self.preds: list[pd.DataFrame] = []
        self.logs: list[dict] = []
        self.fold_rows: list[dict] = []

    def record(self, fold: Fold, variant: str, scores: np.ndarray, per_window: bool, info: dict,
               permutation: int = 0) -> None:
        frame = pd.DataFrame({"subject": fold.test_subject if per_window else fold.test, "score": scores})
        frame = frame.groupby("subject", as_index=False)["score"].mean()
        frame["label"] = self.cohort.labels.loc[frame["subject"]].to_numpy()
        self.preds.append(frame.assign(setup=fold.setup, variant=variant, repeat=fold.repeat,
                                       permutation=permutation, fold=fold.index))
        self.logs.append({"setup": fold.setup, "variant": variant, "repeat": fold.repeat,
                          "permutation": permutation, "fold": fold.index, **info})
        log.info("  %-18s done at %.0f s", variant, time.monotonic() - fold.started)

    def tables(self, settings: FinetuneSettings) -> dict[str, pd.DataFrame]:
        predictions = pd.concat(self.preds, ignore_index=True)[["setup", "variant", "repeat", "permutation", "fold",
                                                                "subject", "label", "score"]]
        metrics = evaluation.summarise(predictions, self.cohort.task, n_boot=settings.bootstrap, seed=settings.seed)
        return {"predictions.tsv": predictions, "metrics.tsv": metrics, "folds.tsv": pd.DataFrame(self.fold_rows),
                "training_log.tsv": pd.DataFrame(self.logs)}


Attribute = Callable[[Fold, FMMTC], None]  # integrated gradients of a fold's trained concat model


def run_fold(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results,
             attribute: Attribute | None) -> None:
    """Every variant, then every baseline, of one fold; ``attribute``: None for no attribution."""
    results.fold_rows += fold.roles()
    for unit in fold_units(settings, bool(inputs.subject_extra), tuple(inputs.recipes)):
        run_unit(unit, fold, inputs, settings, results, attribute)


# ("variants", names) | ("control", permutation) | ("baselines",) | ("probe",) | ("extra",)
# | ("recipe", name, variant) | ("recipe_control", name, permutation)
Unit = tuple


def fold_units(settings: FinetuneSettings, extra_probes: bool = False, recipes: tuple[str, ...] = ()) -> list[Unit]:
    """One fold's work as independent units, in the order their results are recorded.

    Every network fit seeds itself (``fit_seed``, permutation ``[seed, fold, k]``), so a unit's
    results do not depend on what ran before it or in which process: units may run anywhere, in
    any order, and be recorded in this order (``fmriflow.finetune.pool``). Staged fusion keeps
    the deep variants in one unit: the fused ones start from that fold's fc_only FC branch.
    ``recipes``: the released models' recipes whose variants run (``recipe_fusion``).
    """
    order = _variant_order(settings)
    staged = settings.staged_fusion and any(v in FUSED for v in order)
    units: list[Unit] = []
    for group in [tuple(order)] if staged else [(v,) for v in order]:
        units.append(("variants", group))
        if "concat" in group and settings.permuted_control:
            units += [("control", k) for k in range(settings.permutations)]
    for name in recipes:
        for variant in settings.recipe_variants:
            units.append(("recipe", name, variant))
            if variant == "concat" and settings.permuted_control:
                units += [("recipe_control", name, k) for k in range(settings.permutations)]
    return units + [("baselines",)] + ([("probe",)] if settings.probe else []) + ([("extra",)] if extra_probes else [])


def run_unit(unit: Unit, fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results,
             attribute: Attribute | None) -> None:
    """One unit of ``fold_units`` on one fold."""
    if unit[0] == "variants":
        _variants(fold, inputs, settings, results, attribute, unit[1])
    elif unit[0] == "control":
        _deep_controls(fold, inputs, settings, results, "concat", "pretrained", [unit[1]])
    elif unit[0] == "baselines":
        _baselines(fold, inputs, settings, results)
    elif unit[0] == "probe":
        _probes(fold, inputs, results)
    elif unit[0] == "extra":
        _extra_probes(fold, inputs, settings, results)
    elif unit[0] == "recipe":
        _recipe_variant(fold, inputs, settings, results, unit[1], unit[2])
    elif unit[0] == "recipe_control":
        part = recipe_fold(fold, inputs, unit[1])
        if part is not None:
            _deep_controls(part, inputs, settings, results, "concat", inputs.recipes[unit[1]].ts["pretrained"],
                           [unit[2]], row=recipe_fusion.row_name("concat", unit[1]))
    else:
        raise ValueError(f"unknown unit {unit!r}")


def _variant_order(settings: FinetuneSettings) -> list[str]:
    """Staged fusion trains fc_only first: its FC branch starts the fused variants'."""
    variants = list(settings.variants)
    if settings.staged_fusion and any(v in FUSED for v in variants):
        variants = ["fc_only"] + [v for v in variants if v != "fc_only"]
    return variants


def _variants(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results,
              attribute: Attribute | None, names: tuple[str, ...]) -> None:
    fc_stage = None  # staged fusion: this fold's fc_only model
    for variant in names:
        encoder = "random" if variant == "no_pretrain" else "pretrained"
        init = fc_stage if variant in FUSED else None
        model, target, info = fit(variant, inputs.cohort.task, inputs.ts[encoder], inputs.fc, inputs.y,
                                  fold.fit_rows, fold.val_rows, settings.train, seed=fold.fit_seed, init_fc=init)
        if variant == "fc_only" and settings.staged_fusion:
            fc_stage = model
            if variant not in settings.variants:
                continue
        scores = predict(model, target, inputs.ts[encoder], inputs.fc, fold.test_rows, settings.train)
        results.record(fold, variant, scores, True, info)
        if variant == "concat" and attribute is not None:
            attribute(fold, model)


def recipe_fold(fold: Fold, inputs: Inputs, name: str) -> Fold | None:
    """The fold restricted to the windows recipe ``name`` has features for (``recipe_fusion``), and to the
    subjects with any; None (logged) where it leaves no fit, validation or test window."""
    valid = inputs.recipes[name].valid

    def keep(subjects):
        return [s for s in subjects if valid[inputs.rows_of[s]].any()]

    rows = {k: getattr(fold, k)[valid[getattr(fold, k)]] for k in ("fit_rows", "val_rows", "test_rows")}
    if not all(len(r) for r in rows.values()):
        log.warning("recipe %s: repeat %d fold %d has no fit, validation or test window with its embeddings; its "
                    "variants skip the fold", name, fold.repeat, fold.index)
        return None
    return dataclasses.replace(fold, train=keep(fold.train), test=keep(fold.test), fit=keep(fold.fit),
                               val=keep(fold.val), test_subject=fold.test_subject[valid[fold.test_rows]], **rows)


def _recipe_variant(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results, name: str,
                    variant: str) -> None:
    """One FMMTC variant with recipe ``name``'s embeddings as its time-series branch: row ``<variant>_<name>``
    (no_pretrain: concat on the random-encoder control's embeddings). Staged fusion stages its own fc_only
    FC branch on the recipe's windows (the same seed: the same fit where they are the fold's windows)."""
    part = recipe_fold(fold, inputs, name)
    if part is None:
        return
    ts = inputs.recipes[name].ts["random" if variant == "no_pretrain" else "pretrained"]
    base = "concat" if variant == "no_pretrain" else variant
    stage = None
    if settings.staged_fusion and variant in FUSED:
        stage, _, _ = fit("fc_only", inputs.cohort.task, ts, inputs.fc, inputs.y, part.fit_rows, part.val_rows,
                          settings.train, seed=fold.fit_seed)
    model, target, info = fit(base, inputs.cohort.task, ts, inputs.fc, inputs.y, part.fit_rows, part.val_rows,
                              settings.train, seed=fold.fit_seed, init_fc=stage)
    scores = predict(model, target, ts, inputs.fc, part.test_rows, settings.train)
    results.record(part, recipe_fusion.row_name(variant, name), scores, True, info)


def _deep_controls(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results, variant: str,
                   encoder: str | np.ndarray, permutations: Iterable[int], row: str | None = None) -> None:
    """Label-permuted refits of ``variant`` on the embeddings of ``encoder`` (a key of ``inputs.ts``, or the
    array itself), recorded as ``permuted_<row>`` (``row``: the variant's row name, default ``variant``)."""
    ts = inputs.ts[encoder] if isinstance(encoder, str) else encoder
    task = inputs.cohort.task

    def fit_score(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        y_perm = permute_subject_labels(inputs.y, inputs.rows_of, fold.fit + fold.val, rng)
        stage = None  # the control stages its own FC branch on the permuted labels, like the real model
        if settings.staged_fusion:
            stage, _, _ = fit("fc_only", task, ts, inputs.fc, y_perm, fold.fit_rows, fold.val_rows, settings.train,
                              seed=fold.fit_seed)
        model, target, info = fit(variant, task, ts, inputs.fc, y_perm, fold.fit_rows, fold.val_rows, settings.train,
                                  seed=fold.fit_seed, init_fc=stage)
        return predict(model, target, ts, inputs.fc, fold.test_rows, settings.train), info

    permuted_controls(results, fold, row or variant, True, fit_score, permutations)


def _baselines(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results) -> None:
    x_train = baselines.upper_triangle(np.stack([inputs.subject_fc[s] for s in fold.train]))
    x_test = baselines.upper_triangle(np.stack([inputs.subject_fc[s] for s in fold.test]))
    y_train = inputs.cohort.labels.loc[fold.train].to_numpy()
    task = inputs.cohort.task
    for name in settings.baselines:
        scores, chosen = baselines.fit_predict(name, task, x_train, y_train, x_test, seed=fold.seed)
        results.record(fold, name, scores, False, chosen)
        if name == "logistic" and settings.permuted_control:
            _baseline_controls(fold, name, task, x_train, y_train, x_test, results, settings.permutations)


def _probes(fold: Fold, inputs: Inputs, results: Results) -> None:
    """The frozen probe of the encoder in use and of the random encoder, on the baselines' subjects."""
    for name, encoder in probes.PROBES.items():
        scores, chosen = probes.fit_predict(inputs.cohort.task, inputs.subject_ts[encoder], inputs.cohort.labels,
                                            fold.train, fold.test, fold.seed, name)
        results.record(fold, name, scores, False, chosen)


def _extra_probes(fold: Fold, inputs: Inputs, settings: FinetuneSettings, results: Results) -> None:
    """Other encoders' embeddings (BrainSymphony's fMRI only, SC only, fused; each released model's
    recipe) under the frozen probe, each with its label-permuted control; a row fits and scores only the
    fold's subjects it has an embedding for. BrainSymphony's fused row under ``brainsymphony.fusion: mean``
    or ``late`` is the unimodal probes' (weighted) mean instead (``_probe_fitter``), its control refitted the
    same way."""
    labels = inputs.cohort.labels
    for name, embeddings in inputs.subject_extra.items():
        part = dataclasses.replace(fold, train=[s for s in fold.train if s in embeddings],
                                   test=[s for s in fold.test if s in embeddings])
        if not part.test:
            continue
        fit_predict = _probe_fitter(name, embeddings, inputs, fold.seed)
        scores, chosen = fit_predict(labels, part.train, part.test, True)
        results.record(part, name, scores, False, chosen)
        if not settings.permuted_control:
            continue

        def fit_score(rng: np.random.Generator, part=part, fit_predict=fit_predict) -> tuple[np.ndarray, dict]:
            shuffled = pd.Series(rng.permutation(labels.loc[part.train].to_numpy()), index=part.train)
            return fit_predict(shuffled, part.train, part.test, False)

        permuted_controls(results, part, name, False, fit_score, settings.permutations)


def _probe_fitter(name: str, embeddings: dict[str, np.ndarray], inputs: Inputs,
                  seed: int) -> Callable[..., tuple[np.ndarray, dict]]:
    """``(labels, train, test, real) -> (scores, log entry)`` of one extra probe row (``real``: False for a
    permuted control): the frozen probe on its embeddings, or late fusion of BrainSymphony's unimodal rows."""
    task, extra = inputs.cohort.task, inputs.subject_extra
    fmri, sc = (extra.get(row) for row in symphony.UNIMODAL)
    if name == symphony.FUSED_ROW and inputs.symphony_fusion != "early" and fmri is not None and sc is not None:
        weights = fusion.EQUAL if inputs.symphony_fusion == "mean" else fusion.WEIGHTS
        return lambda labels, train, test, real: fusion.fit_predict(
            task, fmri, sc, labels, train, test, seed, name if real else PERMUTED + name, warn=real, weights=weights)
    return lambda labels, train, test, real: probes.fit_predict(
        task, embeddings, labels, train, test, seed, name if real else PERMUTED + name, warn=real)


def _baseline_controls(fold: Fold, name: str, task: str, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, results: Results, permutations: int) -> None:
    def fit_score(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        return baselines.fit_predict(name, task, x_train, rng.permutation(y_train), x_test, seed=fold.seed,
                                     warn=False)  # a penalty on the grid's edge is expected with no signal

    permuted_controls(results, fold, name, False, fit_score, permutations)


def permuted_controls(results: Results, fold: Fold, name: str, per_window: bool,
                      fit_score: Callable[[np.random.Generator], tuple[np.ndarray, dict]],
                      permutations: int | Iterable[int]) -> None:
    """Label-permuted refits of ``name`` on this fold, recorded as ``permuted_<name>``: ``permutations``
    of them, or the permutations ``k`` listed.

    ``fit_score(rng)`` shuffles the training labels with ``rng`` (seeded ``[seed, fold, k]``), refits
    and returns the test scores and the fit's log entry.
    """
    for k in range(permutations) if isinstance(permutations, int) else permutations:
        scores, info = fit_score(np.random.default_rng([fold.seed, fold.index, k]))
        results.record(fold, PERMUTED + name, scores, per_window, info, permutation=k)


def permute_subject_labels(y: np.ndarray, rows_of: dict, subjects: list[str], rng: np.random.Generator) -> np.ndarray:
    """Shuffle labels across the training subjects (whole subjects, so windows stay together)."""
    labels = np.array([y[rows_of[s][0]] for s in subjects])
    out = y.copy()
    for s, label in zip(subjects, rng.permutation(labels)):
        out[rows_of[s]] = label
    return out
