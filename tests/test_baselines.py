"""FC baselines: penalties chosen by inner-CV AUROC / Pearson r, checked against scikit-learn's
GridSearchCV over StandardScaler + LogisticRegression / RidgeClassifier / Ridge on the same folds;
no warnings on a realistic p >> n cohort; grid edges reported; groups never split."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmriflow import baselines, evaluation


def _cohort(n: int, regions: int, trs: int, effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Subjects' Fisher-z FC from region time series: shared network factors with subject-specific
    loadings, and a weakly stronger coupling of 20 planted regions in group 1."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    loadings = rng.normal(0, 0.6, (regions, 8))
    planted = rng.choice(regions, 20, replace=False)
    fc = np.empty((n, regions, regions), np.float32)
    for i in range(n):
        ts = rng.normal(0, 1, (trs, 8)) @ (loadings + rng.normal(0, 0.3, loadings.shape)).T
        ts += rng.normal(0, 1, (trs, regions))
        ts[:, planted] += effect * y[i] * rng.normal(0, 1, (trs, 1))
        z = np.arctanh(np.clip(np.corrcoef(ts.T), -0.999, 0.999))
        np.fill_diagonal(z, 0)
        fc[i] = z
    return baselines.upper_triangle(fc), y


@pytest.fixture(scope="module")
def small():
    """435 edges, 90 subjects: small enough for the reference fits on all edges."""
    x, y = _cohort(90, 30, 80, 0.6, seed=1)
    return x, y


def _reference(estimator, param: str, grid: np.ndarray, scoring, splits, x, y) -> GridSearchCV:
    with warnings.catch_warnings():  # the reference's own solver may warn; only ours is held to silence
        warnings.simplefilter("ignore")
        return GridSearchCV(make_pipeline(StandardScaler(), estimator), {param: grid}, scoring=scoring,
                            cv=splits, n_jobs=1).fit(x, y)


def test_logistic_choice_and_scores_match_gridsearchcv_on_the_same_folds(small):
    x, y = small
    train, test = np.arange(72), np.arange(72, 90)
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x[train], y[train]))
    grid = baselines.penalty_grid("logistic", baselines.Basis.fit(x[train])[0].s2)
    assert grid[0] > grid[-1]  # C: the weakest penalty first
    ref = _reference(LogisticRegression(max_iter=100_000, tol=1e-10), "logisticregression__C", grid, "roc_auc",
                     splits, x[train], y[train])
    choice = baselines.choose("logistic", "classification", x[train], y[train], splits, grid)
    np.testing.assert_allclose(choice.scores, ref.cv_results_["mean_test_score"], atol=2e-3)
    assert choice.index == ref.best_index_ and choice.value == pytest.approx(ref.best_params_["logisticregression__C"])
    scores, info = baselines.fit_predict("logistic", "classification", x[train], y[train], x[test], seed=0)
    np.testing.assert_allclose(scores, ref.best_estimator_.predict_proba(x[test])[:, 1], atol=1e-4)
    assert info["C"] == pytest.approx(ref.best_params_["logisticregression__C"])
    assert info["inner_auroc"] == pytest.approx(ref.best_score_, abs=2e-3)


def test_ridge_classifier_choice_and_scores_match_gridsearchcv(small):
    x, y = small
    train, test = np.arange(72), np.arange(72, 90)
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x[train], y[train]))
    grid = baselines.penalty_grid("ridge", baselines.Basis.fit(x[train])[0].s2)
    ref = _reference(RidgeClassifier(solver="svd"), "ridgeclassifier__alpha", grid, "roc_auc", splits,
                     x[train], y[train])
    choice = baselines.choose("ridge", "classification", x[train], y[train], splits, grid)
    np.testing.assert_allclose(choice.scores, ref.cv_results_["mean_test_score"], atol=1e-9)
    assert choice.index == ref.best_index_
    scores, info = baselines.fit_predict("ridge", "classification", x[train], y[train], x[test], seed=0)
    np.testing.assert_allclose(scores, expit(ref.best_estimator_.decision_function(x[test])), rtol=1e-6)
    assert info["alpha"] == pytest.approx(ref.best_params_["ridgeclassifier__alpha"])


def test_ridge_regression_is_chosen_by_pearson_r_as_gridsearchcv_would():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 300))
    y = x[:, :30] @ rng.normal(size=30) * 0.3 + rng.normal(size=80) * 3
    train, test = np.arange(64), np.arange(64, 80)
    splits = list(KFold(5, shuffle=True, random_state=0).split(x[train]))
    grid = baselines.penalty_grid("ridge", baselines.Basis.fit(x[train])[0].s2)
    r_scorer = make_scorer(lambda t, p: pearsonr(t, p)[0])
    ref = _reference(Ridge(solver="svd"), "ridge__alpha", grid, r_scorer, splits, x[train], y[train])
    choice = baselines.choose("ridge", "regression", x[train], y[train], splits, grid)
    assert baselines.SELECTION["regression"] in evaluation.REGRESSION
    np.testing.assert_allclose(choice.scores, ref.cv_results_["mean_test_score"], atol=1e-9)
    assert choice.index == ref.best_index_
    scores, info = baselines.fit_predict("ridge", "regression", x[train], y[train], x[test], seed=0)
    np.testing.assert_allclose(scores, ref.best_estimator_.predict(x[test]), rtol=1e-6)
    assert set(info) == {"alpha", "penalty_edge", "inner_pearson_r"}


def test_no_warnings_on_a_realistic_p_much_greater_than_n_cohort():
    x, y = _cohort(200, 200, 100, 0.5, seed=0)  # 19,900 edges, 200 subjects
    assert x.shape == (200, 19_900)
    train, test = np.arange(160), np.arange(160, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in baselines.BASELINES:
            scores, info = baselines.fit_predict(name, "classification", x[train], y[train], x[test], seed=0)
            assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
            assert info["penalty_edge"] in ("", "weakest", "strongest")
            auroc = evaluation.compute("classification", y[test], scores)["auroc"]
            assert 0.6 < auroc < 1.0, (name, auroc)  # a weak effect, found


def test_grid_reaches_past_the_eigenvalues_at_both_ends(small):
    x, _ = small
    s2 = baselines.Basis.fit(x)[0].s2
    singular = np.linalg.svd(StandardScaler().fit_transform(x.astype(float)), compute_uv=False)
    np.testing.assert_allclose(np.sort(s2)[::-1], singular[:len(s2)] ** 2, rtol=1e-8)
    assert len(s2) == len(x) - 1  # centring removes one dimension of 90 subjects' span
    alpha = baselines.penalty_grid("ridge", s2)
    assert alpha[0] <= 1e-3 * s2.min() * 1.0001 and alpha[-1] >= 1e3 * s2.max() * 0.9999
    assert np.allclose(np.diff(np.log10(alpha)), np.diff(np.log10(alpha))[0]) and np.diff(np.log10(alpha))[0] <= 0.5
    np.testing.assert_allclose(baselines.penalty_grid("logistic", s2), 4 / alpha)


def test_a_choice_on_the_grid_edge_is_recorded_and_warned(caplog):
    # the target is the difference of two nearly collinear features, their direction of least variance:
    # every penalty shrinks it before the nuisance direction (their sum), so least squares predicts best
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 120))
    x = np.column_stack([a + 0.05 * b, a - 0.05 * b, rng.normal(size=(120, 3))])
    y = b + 0.3 * rng.normal(size=120)
    with caplog.at_level(logging.WARNING, logger="fmriflow.baselines"):
        _, info = baselines.fit_predict("ridge", "regression", x[:100], y[:100], x[100:])
    assert info["penalty_edge"] == "weakest"
    assert any("'ridge'" in r.message and "weakest" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fmriflow.baselines"):
        baselines.fit_predict("ridge", "regression", x[:100], y[:100], x[100:], warn=False)
    assert not caplog.records
    grid = np.array([3.0, 2.0, 1.0])
    assert baselines.Choice("ridge", "auroc", grid, np.array([0.5, 0.6, 0.7]), 2).edge == "strongest"
    assert baselines.Choice("ridge", "auroc", grid, np.array([0.5, 0.7, 0.6]), 1).edge == ""


def test_inner_folds_keep_each_group_whole_and_stratify():
    y = np.repeat(np.arange(40) % 2, 3)  # 40 subjects, 3 windows each
    groups = np.repeat(np.arange(40), 3)
    splits = baselines.inner_splits("classification", y, groups, 5, seed=0)
    assert len(splits) == 5
    for fit_idx, val_idx in splits:
        assert not set(groups[fit_idx]) & set(groups[val_idx])
        assert 0.3 < y[val_idx].mean() < 0.7
    assert sorted(np.concatenate([v for _, v in splits])) == list(range(120))
    regression = baselines.inner_splits("regression", np.arange(120.0), groups, 5, seed=0)
    assert all(not set(groups[f]) & set(groups[v]) for f, v in regression)


def test_a_class_of_one_training_subject_falls_back_to_the_class_rate():
    x = np.random.default_rng(0).normal(size=(10, 20))
    y = np.array([0] * 9 + [1])
    scores, info = baselines.fit_predict("logistic", "classification", x, y, x[:3])
    assert info == {"fallback": "class prior"} and np.allclose(scores, 0.1)
    with pytest.raises(ValueError, match="'logistic' baseline needs a classification target"):
        baselines.fit_predict("logistic", "regression", x, y.astype(float), x)
    with pytest.raises(ValueError, match=r"'baseline' must be one of \('logistic', 'ridge'\). Got: 'svm'"):
        baselines.fit_predict("svm", "classification", x, y, x)


def test_fewer_features_than_subjects_converge_silently_and_match_an_independent_solver():
    """Frozen embeddings: collinear, fewer features than subjects (the 1,000-subject probe's lbfgs stopped
    at its cap at the grid's weak end). The whole path, without warnings, equals Newton-CG on the
    standardised, unrotated features at every C."""
    rng = np.random.default_rng(0)
    n, p = 300, 64
    latent = rng.normal(size=(n, 6))
    x = latent @ rng.normal(size=(6, p)) + 0.05 * rng.normal(size=(n, p))  # eigenvalues over 1e5
    y = (latent[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    train, test = np.arange(240), np.arange(240, 300)
    basis, z = baselines.Basis.fit(x[train])
    assert z.shape[1] == p and basis.s2.max() / basis.s2.min() > 1e5
    grid = baselines.penalty_grid("logistic", basis.s2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = baselines.path_scores("logistic", "classification", z, y[train], basis.transform(x[test]), grid)
        scores, info = baselines.fit_predict("logistic", "classification", x[train], y[train], x[test], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, c in enumerate(grid):
            ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="newton-cg", tol=1e-12,
                                                                     max_iter=100_000)).fit(x[train], y[train])
            np.testing.assert_allclose(ours[i], ref.predict_proba(x[test])[:, 1], atol=1e-5, err_msg=f"C={c:.3g}")
    assert np.isfinite(scores).all() and info["C"] in grid
