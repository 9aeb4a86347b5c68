"""FC baselines that always run beside the foundation models.

Features are the upper triangle of each subject's Fisher-z FC (mean over that subject's
windows), standardised on the training subjects. Penalties are chosen by an inner
stratified CV on the training subjects only (nested CV), so the outer test fold never
informs them:

``logistic``
    logistic regression; the inner CV chooses C and the penalty (L1 or L2): an L1 penalty
    finds sparse edge effects that L2 spreads over every edge.
``ridge``
    L2-penalised least squares (scikit-learn's ``RidgeClassifier`` for labels, ``Ridge``
    for continuous targets); the inner CV chooses alpha.

Classification scores are probabilities (logistic) or the sigmoid of the ridge decision
value, so every variant is thresholded at 0.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BASELINES = ("logistic", "ridge")
C_GRID = np.logspace(-2, 2, 5)
ALPHA_GRID = np.logspace(-1, 5, 7)


def upper_triangle(fc: np.ndarray) -> np.ndarray:
    """(n, R, R) matrices -> (n, R*(R-1)/2) upper-triangle features."""
    iu = np.triu_indices(fc.shape[-1], k=1)
    return fc[:, iu[0], iu[1]]


def _estimator(name: str, task: str, seed: int):
    if name == "logistic":
        if task != "classification":
            raise ValueError("the 'logistic' baseline needs a classification target")
        # liblinear solves L2 in the dual (4x faster with far more edges than subjects); L1 only primal
        grid = [{"logisticregression__C": C_GRID, "logisticregression__l1_ratio": [0.0],
                 "logisticregression__dual": [True]},
                {"logisticregression__C": C_GRID, "logisticregression__l1_ratio": [1.0],
                 "logisticregression__dual": [False]}]
        return make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear", max_iter=1000,
                                                                  random_state=seed)), grid
    if name == "ridge":
        model = RidgeClassifier() if task == "classification" else Ridge()
        return make_pipeline(StandardScaler(), model), {f"{type(model).__name__.lower()}__alpha": ALPHA_GRID}
    raise ValueError(f"'baseline' must be one of {BASELINES}. Got: {name!r}")


def fit_predict(name: str, task: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                seed: int = 0, inner_folds: int = 3) -> tuple[np.ndarray, dict]:
    """Nested-CV fit on the training subjects; scores for the test subjects and the chosen penalty."""
    model, grid = _estimator(name, task, seed)
    if task == "classification" and np.bincount(y_train.astype(int), minlength=2).min() < 2:
        # a class with fewer than two training subjects: no penalty can be chosen; predict the
        # training class rate, which scores at chance, rather than fail the whole set-up
        return np.full(len(x_test), float(np.mean(y_train))), {"fallback": "class prior"}
    if task == "classification":
        n_inner = max(2, min(inner_folds, int(np.bincount(y_train.astype(int)).min())))
        inner = StratifiedKFold(n_inner, shuffle=True, random_state=seed)
    else:
        inner = KFold(max(2, min(inner_folds, len(y_train))), shuffle=True, random_state=seed)
    search = GridSearchCV(clone(model), grid, cv=inner, n_jobs=1)
    search.fit(x_train, y_train)
    best = search.best_estimator_
    if task == "regression":
        scores = best.predict(x_test)
    elif hasattr(best, "predict_proba"):
        scores = best.predict_proba(x_test)[:, 1]
    else:
        scores = 1.0 / (1.0 + np.exp(-best.decision_function(x_test)))
    return scores, {k.split("__")[-1]: float(v) for k, v in search.best_params_.items() if not k.endswith("dual")}
