"""Supervised late fusion of BrainSymphony's unimodal probes (fmriflow.finetune.fusion) against scikit-learn:
the inner-CV AUROC of every weight recomputed with GridSearchCV probes and roc_auc_score, the weight it
picks, the fused test scores, and the unimodal rows when the weight is forced to 1 or 0."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from fmriflow.finetune import fusion
from fmriflow.finetune import probe as probes
from test_finetune_probe import _reference

SUBJECTS, SEED = 24, 2
TEST = 6  # the last subjects of the shuffled order are the outer test fold


@pytest.fixture(scope="module")
def data():
    """Each modality carries part of a label effect (fMRI one feature, SC another), plus noise features."""
    rng = np.random.default_rng(11)
    labels = np.arange(SUBJECTS) % 2
    names = [f"s{i:02d}" for i in range(SUBJECTS)]
    fmri = rng.standard_normal((SUBJECTS, 4))
    sc = rng.standard_normal((SUBJECTS, 4))
    fmri[:, 0] += 0.9 * labels
    sc[:, 1] += 0.9 * labels
    order = [names[i] for i in rng.permutation(SUBJECTS)]
    return (dict(zip(names, fmri)), dict(zip(names, sc)), pd.Series(labels, index=names).astype(float),
            order[:-TEST], order[-TEST:])


def _probe(embeddings, labels, fit, val):
    """The frozen probe by scikit-learn: GridSearchCV over the baselines' grid on stratified inner folds."""
    x_fit, y_fit = np.stack([embeddings[s] for s in fit]), labels[fit].to_numpy().astype(int)
    inner = StratifiedKFold(min(5, int(np.bincount(y_fit).min())), shuffle=True, random_state=SEED)
    model, _ = _reference(LogisticRegression(max_iter=100_000, tol=1e-8), "logistic", "roc_auc", inner, x_fit, y_fit)
    return model.predict_proba(np.stack([embeddings[s] for s in val]))[:, 1]


def _reference_choice(fmri, sc, labels, train):
    y = labels[train].to_numpy().astype(int)
    per_fold = []
    for fit_idx, val_idx in StratifiedKFold(5, shuffle=True, random_state=SEED).split(np.zeros(len(y)), y):
        fit, val = [train[i] for i in fit_idx], [train[i] for i in val_idx]
        p_f, p_s = _probe(fmri, labels, fit, val), _probe(sc, labels, fit, val)
        per_fold.append([roc_auc_score(y[val_idx], w * p_f + (1 - w) * p_s) for w in fusion.WEIGHTS])
    return np.mean(per_fold, axis=0)


def test_weight_choice_and_fused_scores_equal_sklearn(data):
    fmri, sc, labels, train, test = data
    expected = _reference_choice(fmri, sc, labels, train)
    ours = fusion.inner_scores("classification", fmri, sc, labels, train, SEED)
    np.testing.assert_allclose(ours, expected, atol=1e-9)  # AUROC of probabilities equal to 1e-4: the same ranks
    best = np.flatnonzero(np.isclose(expected, expected.max(), rtol=0, atol=1e-12))
    w = min(fusion.WEIGHTS[best], key=lambda v: (abs(v - 0.5), v))  # ties: nearest equal weights, then smaller
    scores, info = fusion.fit_predict("classification", fmri, sc, labels, train, test, SEED)
    assert info["w_fmri"] == pytest.approx(w) and info["inner_auroc"] == pytest.approx(expected.max())
    reference = w * _probe(fmri, labels, train, test) + (1 - w) * _probe(sc, labels, train, test)
    np.testing.assert_allclose(scores, reference, atol=1e-4)


@pytest.mark.parametrize(("w", "alone"), [(1.0, "fmri"), (0.0, "sc")])
def test_forced_weight_gives_the_unimodal_row(data, w, alone, caplog):
    fmri, sc, labels, train, test = data
    embeddings = {"fmri": fmri, "sc": sc}[alone]
    scores, info = fusion.fit_predict("classification", fmri, sc, labels, train, test, SEED, weights=[w])
    unimodal, _ = probes.fit_predict("classification", embeddings, labels, train, test, SEED)
    np.testing.assert_array_equal(scores, unimodal)
    np.testing.assert_allclose(scores, _probe(embeddings, labels, train, test), atol=1e-4)
    assert info["weight_edge"] == {"fmri": "fmri only", "sc": "sc only"}[alone]


def test_ties_go_to_equal_weights_nan_never_wins_and_an_edge_is_logged(data, caplog):
    weights = fusion.WEIGHTS
    scores = np.where(np.isin(np.round(weights, 1), [0.2, 0.3, 0.7]), 0.8, 0.6)
    assert weights[fusion.pick(weights, scores)] == pytest.approx(0.3)  # 0.3 and 0.7 equally near 0.5
    scores[5] = 0.8
    assert weights[fusion.pick(weights, scores)] == pytest.approx(0.5)
    assert fusion.pick(weights, np.r_[np.nan, np.full(10, 0.1)]) == 5
    fmri, sc, labels, train, test = data
    noise = {s: np.random.default_rng(int(s[1:])).standard_normal(4) for s in sc}
    perfect = {s: v + 5.0 * labels[s] for s, v in fmri.items()}
    with caplog.at_level(logging.WARNING, logger="fmriflow.finetune.fusion"):
        _, info = fusion.fit_predict("classification", perfect, noise, labels, train, test, SEED, weights=[0.0, 1.0])
    assert info["w_fmri"] == 1.0 and "w=1.0, fmri only" in caplog.text


def test_a_subject_without_a_connectome_takes_the_fmri_score(data):
    fmri, sc, labels, train, test = data
    partial = {s: v for s, v in sc.items() if s != test[0]}
    scores, _ = fusion.fit_predict("classification", fmri, partial, labels, train, test, SEED)
    alone, _ = probes.fit_predict("classification", fmri, labels, train, test, SEED)
    assert scores[0] == alone[0]
