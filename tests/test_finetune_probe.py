"""Frozen probes: the rows ``probe`` and ``probe_random`` of a set-up equal scikit-learn's GridSearchCV over
StandardScaler + LogisticRegression (Ridge for a continuous target) on the subjects' mean window embeddings,
on the FC baselines' folds."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmriflow import baselines
from fmriflow.datasets.regions import REGION_MASK, SAMPLES
from fmriflow.finetune.run import features_step, setup_step
from fmriflow.finetune.settings import FinetuneSettings, TrainSettings
from fmriflow.models.brainlm import BrainLM, BrainLMConfig

REGIONS, TRS, SUBJECTS, WINDOWS, FOLDS, SEED = 10, 40, 36, 2, 3, 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """36 labelled subjects of two windows each, an effect in three regions' shared signal, a tiny encoder."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(1)
    labels = np.arange(SUBJECTS) % 2
    subject = np.repeat(np.arange(SUBJECTS), WINDOWS)
    windows = rng.standard_normal((len(subject), REGIONS, TRS)).astype(np.float32)
    windows[labels[subject] == 1, :3] += 0.7 * rng.standard_normal((int(labels[subject].sum()), 1, TRS)).astype(np.float32)
    dataset = root / "dataset"
    dataset.mkdir()
    np.save(dataset / SAMPLES, windows)
    np.save(dataset / REGION_MASK, np.ones(windows.shape[:2], dtype=bool))
    names = [f"{i:02d}" for i in range(SUBJECTS)]
    pd.DataFrame({"sample": range(len(subject)), "run": [names[s] for s in subject], "subject": [names[s] for s in subject],
                  "split": "train", "start_tr": 0, "tr": 2.0}).to_csv(dataset / "index.tsv", sep="\t", index=False)
    score = labels + np.random.default_rng(2).standard_normal(SUBJECTS)  # a continuous target: the ridge probe
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in names], "response": labels, "score": score}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    xyz = rng.uniform(-50, 50, (REGIONS, 3)).astype(np.float32)
    pd.DataFrame({"index": range(1, REGIONS + 1), "name": [f"r{i}" for i in range(REGIONS)], "x": xyz[:, 0],
                  "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(root / "atlas.tsv", sep="\t", index=False)
    config = BrainLMConfig(hidden=4, n_layers=1, n_heads=2, decoder_hidden=4, decoder_layers=1, decoder_heads=2,
                           max_timepoints=TRS)
    torch.manual_seed(0)
    torch.save({"model": BrainLM(config, xyz).state_dict(), "model_config": dataclasses.asdict(config)},
               root / "model.pt")
    features_step(str(dataset), str(root / "model.pt"), str(root / "atlas.tsv"), str(root / "features"), seed=SEED)
    settings = dict(folds=FOLDS, repeats=1, variants=(), permuted_control=False, attribution=False,
                    seed=SEED, bootstrap=20, train=TrainSettings(embed_dim=4, resnet_width=2, batch_size=4, max_epochs=1))
    for target, out, chosen in (("response", "out", ("logistic",)), ("score", "out-score", ("ridge",))):
        setup_step("agnostic", str(dataset), str(root / "features"), str(root / "participants.tsv"),
                   str(root / "model.pt"), str(root / "atlas.tsv"), str(root / out),
                   FinetuneSettings(target=target, baselines=chosen, **settings), workers=1)
    return root, labels, names, score


def _read(path):
    return pd.read_csv(path, sep="\t", dtype={"subject": str})


def _embeddings(root, which: str) -> np.ndarray:
    """Per subject, the mean of its windows' stored embeddings, computed here from the feature files."""
    ts = np.load(root / "features" / f"{which}.npy").astype(np.float64)
    samples = np.load(root / "features" / "samples.npy")
    index = pd.read_csv(root / "dataset" / "index.tsv", sep="\t", dtype={"subject": str}).set_index("sample")
    subjects = index.loc[samples, "subject"].to_numpy()
    return np.stack([ts[subjects == s].mean(axis=0) for s in sorted(set(subjects))])


def _reference(estimator, name: str, scoring, inner, x_train, y_train):
    """GridSearchCV's inner curve over the baselines' grid, the best value refitted on all training subjects.

    Ties (equal inner metrics up to the float error of their mean) go to the first, weakest penalty, as
    ``baselines.choose`` documents; GridSearchCV's own pick among them turns on that float error.
    """
    s2 = np.linalg.svd(StandardScaler().fit_transform(x_train), compute_uv=False) ** 2
    grid = baselines.penalty_grid(name, s2[s2 > s2.max() * 1e-10])  # the search space; the search is sklearn's
    param = f"{type(estimator).__name__.lower()}__{baselines.PENALTY[name]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(make_pipeline(StandardScaler(), estimator), {param: grid}, scoring=scoring, cv=inner,
                              refit=False).fit(x_train, y_train)
        mean = search.cv_results_["mean_test_score"]
        value = grid[np.flatnonzero(mean >= np.nanmax(mean) - 1e-9)[0]]
        return make_pipeline(StandardScaler(), estimator.set_params(**{baselines.PENALTY[name]: value})).fit(
            x_train, y_train), value


def _gridsearch(x_train, y_train, x_test):
    inner = StratifiedKFold(min(5, int(np.bincount(y_train).min())), shuffle=True, random_state=SEED)
    model, c = _reference(LogisticRegression(max_iter=100_000, tol=1e-8), "logistic", "roc_auc", inner,
                          x_train, y_train)
    return model.predict_proba(x_test)[:, 1], c


def test_probe_rows_equal_gridsearchcv_on_the_baselines_folds(cohort):
    root, labels, names, _ = cohort
    names = np.array(names)
    preds = _read(root / "out" / "predictions.tsv")
    log = _read(root / "out" / "training_log.tsv")
    # the outer folds, independently: stratified 3-fold of the sorted subjects with the set-up's seed
    folds = list(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(names, labels))
    for name, which in (("probe", "ts_pretrained"), ("probe_random", "ts_random")):
        x = _embeddings(root, which)
        for k, (train, test) in enumerate(folds):
            ours = preds[(preds["variant"] == name) & (preds["fold"] == k)].set_index("subject")
            baseline = preds[(preds["variant"] == "logistic") & (preds["fold"] == k)]
            assert sorted(ours.index) == sorted(baseline["subject"]) == sorted(names[test])  # the baselines' folds
            expected, c = _gridsearch(x[train], labels[train], x[test])
            np.testing.assert_allclose(ours.loc[names[test], "score"], expected, atol=1e-4)
            chosen = log[(log["variant"] == name) & (log["fold"] == k)]
            assert chosen["probe"].item() == "logistic" and chosen["C"].item() == pytest.approx(c)


def test_ridge_probe_of_a_continuous_target_equals_gridsearchcv(cohort):
    root, _, names, score = cohort
    names = np.array(names)
    preds = _read(root / "out-score" / "predictions.tsv")
    pearson = make_scorer(lambda y, p: pearsonr(y, p)[0] if np.ptp(p) > 0 else np.nan)
    for name, which in (("probe", "ts_pretrained"), ("probe_random", "ts_random")):
        x = _embeddings(root, which)
        for k, ours in preds[preds["variant"] == name].groupby("fold"):
            baseline = preds[(preds["variant"] == "ridge") & (preds["fold"] == k)]
            assert sorted(ours["subject"]) == sorted(baseline["subject"])  # the baselines' folds
            test = np.isin(names, ours["subject"])
            ref, _ = _reference(Ridge(), "ridge", pearson, KFold(5, shuffle=True, random_state=SEED), x[~test],
                                score[~test])
            np.testing.assert_allclose(ours.set_index("subject").loc[names[test], "score"],
                                       ref.predict(x[test]), rtol=1e-6, atol=1e-8)


def test_metrics_have_probe_rows_with_cis_and_the_random_encoder_differs(cohort):
    root, *_ = cohort
    metrics = _read(root / "out" / "metrics.tsv").set_index("variant")
    assert {"probe", "probe_random", "logistic"} <= set(metrics.index)
    for name in ("probe", "probe_random"):
        row = metrics.loc[name]
        assert row["n_subjects"] == SUBJECTS
        assert row["auroc_ci_low"] <= row["auroc_pooled"] <= row["auroc_ci_high"]
    assert not np.allclose(_embeddings(root, "ts_pretrained"), _embeddings(root, "ts_random"))
