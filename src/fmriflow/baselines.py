"""FC baselines that always run beside the foundation models.

Features are the upper triangle of each subject's Fisher-z FC (mean over that subject's
windows), standardised with the training subjects' mean and sd. Each baseline's penalty is
chosen by an inner cross-validation on the training subjects only (nested CV: the outer
test fold never informs it), by the metric the tables report (``SELECTION``: AUROC for
classification, Pearson r for regression), as the grid value with the best mean over the
inner folds:

``logistic``
    L2-penalised logistic regression; the inner CV chooses C.
``ridge``
    L2-penalised least squares (on -1/+1 class codes for labels, as scikit-learn's
    ``RidgeClassifier``; on the values for continuous targets); the inner CV chooses alpha.

Rows are subjects, so inner folds of rows are folds of subjects; a caller whose rows are
windows passes ``groups`` and the inner folds keep each group whole.

With far more edges than subjects (19,900 edges of a 200-region atlas, a few hundred
subjects) both fits are solved exactly in the span of the training subjects: the
standardised training matrix is X = U S V^T (thin SVD, rank r <= n), every L2-penalised
linear solution lies in the row space of X, so fitting on the r rotated features U S (and
predicting from X V) gives the same coefficients as the fit on all p edges, without the
ill-conditioned p x p or n x n systems and with a logistic problem small enough to converge
at every C (lbfgs or Newton steps by its shape: ``logistic_solver``).

The grid follows the data: the penalty matters only where it is comparable to the
eigenvalues of X^T X, so the grid runs from 1000 times below the smallest to 1000 times
above the largest (``penalty_grid``). Its ends are the fits' limits: at the strongest
penalty the scores rank subjects by their projection on X^T y (the training classes' mean
difference), at the weakest ridge is the unpenalised (minimum-norm) least-squares fit and
logistic regression separates the training subjects, weaker penalties only growing its
weights. A choice on an edge is therefore a limit, not a grid cut short; it is logged as a
warning and recorded (``penalty_edge``) all the same, since it says the data preferred no
penalty, or the crudest model.

Classification scores are probabilities (logistic) or the sigmoid of the ridge decision
value, so every variant is thresholded at 0.5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

BASELINES = ("logistic", "ridge")
SELECTION = {"classification": "auroc", "regression": "pearson_r"}  # the inner CV's metric (evaluation.compute)
GRID_STEP = 0.5  # decades between grid values
LIMIT_DECADES = 3.0  # the grid's reach beyond the smallest and largest eigenvalue of X^T X
MAX_DECADES = 18.0  # at most (near-collinear features: a vanishing smallest eigenvalue)
EIG_RTOL = 1e-10  # eigenvalues of X X^T below this share of the largest are the null space
PENALTY = {"logistic": "C", "ridge": "alpha"}
INNER_FOLDS = 5
EDGE_MEANS = {"strongest": "its limit, scores ranking subjects by their projection on X^T y",
              "weakest": "its limit, the training subjects fitted or separated; no penalty is preferred"}
LOGISTIC_MAX_ITER = 10_000  # a cap far above the iterations measured per C in the rotated space (logistic_solver)
LOGISTIC_TOL = 1e-6


def upper_triangle(fc: np.ndarray) -> np.ndarray:
    """(n, R, R) matrices -> (n, R*(R-1)/2) upper-triangle features."""
    iu = np.triu_indices(fc.shape[-1], k=1)
    return fc[:, iu[0], iu[1]]


@dataclass(frozen=True)
class Basis:
    """Standardisation and the training rows' principal axes: x -> ((x - mean) / sd) V, (n, r)."""

    mean: np.ndarray  # (p,)
    sd: np.ndarray  # (p,), 1 for constant features
    v: np.ndarray  # (p, r), orthonormal columns spanning the standardised training rows
    s2: np.ndarray  # (r,) their eigenvalues of X^T X (squared singular values of X)

    @classmethod
    def fit(cls, x: np.ndarray) -> tuple[Basis, np.ndarray]:
        """The basis of the training rows ``x`` (n, p) and their rotated features (n, r)."""
        x = np.asarray(x, dtype=np.float64)  # FC is stored as float32: too coarse for lbfgs's line search
        mean = x.mean(axis=0)
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        xs = (x - mean) / sd
        # eigenvectors of the smaller Gram matrix (n x n when edges outnumber subjects): 10x faster
        # than the SVD of X; eigenvalues below EIG_RTOL of the largest (the centring's null one) dropped
        wide = len(xs) <= xs.shape[1]
        w, vecs = np.linalg.eigh(xs @ xs.T if wide else xs.T @ xs)
        keep = w > max(w.max(initial=0.0), 0.0) * EIG_RTOL
        w, vecs = w[keep], vecs[:, keep]
        if wide:  # X = U S V^T: V = X^T U / S, and the rotated rows X V = U S
            return cls(mean, sd, xs.T @ vecs / np.sqrt(w), w), vecs * np.sqrt(w)
        return cls(mean, sd, vecs, w), xs @ vecs

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.sd) @ self.v


def penalty_grid(name: str, s2: np.ndarray) -> np.ndarray:
    """The grid of ``name``'s penalty parameter for eigenvalues ``s2`` of X^T X, weakest penalty first.

    lam runs in half decades from LIMIT_DECADES below the smallest eigenvalue to LIMIT_DECADES
    above the largest, where the fits have reached their limits; ridge's alpha = lam; logistic's
    C = 4 / lam (the logistic loss curves by 1/4 per subject at 0, so C X^T X / 4 + I compares
    with X^T X + lam I).
    """
    if len(s2) == 0:
        return np.array([1.0])
    hi = np.log10(s2.max()) + LIMIT_DECADES
    lo = max(np.log10(s2.min()) - LIMIT_DECADES, hi - MAX_DECADES)
    lam = np.logspace(lo, hi, int(np.ceil((hi - lo) / GRID_STEP)) + 1)
    return 4.0 / lam if name == "logistic" else lam


def _check(name: str, task: str) -> None:
    if name not in BASELINES:
        raise ValueError(f"'baseline' must be one of {BASELINES}. Got: {name!r}")
    if task not in SELECTION:
        raise ValueError(f"'task' must be one of {tuple(SELECTION)}. Got: {task!r}")
    if name == "logistic" and task != "classification":
        raise ValueError("the 'logistic' baseline needs a classification target")


def logistic_solver(n: int, r: int) -> str:
    """lbfgs where the rotated features span the training rows (r >= n - 1: more features than subjects,
    FC), Newton steps where there are fewer features than subjects (frozen embeddings, network read-outs).

    With r < n - 1 the weak end of the grid is a nearly unpenalised fit whose Hessian spans the
    eigenvalues' range (often 1e6 and more for collinear embeddings): lbfgs then needs thousands of
    iterations and stopped at the cap (a 1,000-subject probe: 158 ConvergenceWarnings and 209 s),
    while Newton-Cholesky converges in 2-12 steps of an r x r system. Where r = n - 1 the Newton
    step costs n^3 and lbfgs converges in 2-15 iterations: measured, the wider problem's path took
    0.05 s with lbfgs against 1.1 s with Newton at 800 subjects.
    """
    return "newton-cholesky" if r < n - 1 else "lbfgs"


def path_scores(name: str, task: str, z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray,
                grid: np.ndarray) -> np.ndarray:
    """Test scores (len(grid), n_test) of ``name`` fitted on rotated features at every grid value."""
    if name == "ridge":
        return _ridge_path(task, z_train, y_train, z_test, grid)
    # warm starts from the next stronger penalty's solution; n x r problems: BLAS threads only contend
    model = LogisticRegression(C=grid[-1], solver=logistic_solver(*z_train.shape), max_iter=LOGISTIC_MAX_ITER,
                               tol=LOGISTIC_TOL, warm_start=True)
    out = np.empty((len(grid), len(z_test)))
    with threadpool_limits(1, user_api="blas"):
        for i in range(len(grid) - 1, -1, -1):
            out[i] = model.set_params(C=grid[i]).fit(z_train, y_train.astype(int)).predict_proba(z_test)[:, 1]
    return out


def _ridge_path(task: str, z: np.ndarray, y: np.ndarray, z_test: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    # z = U S is centred, so the intercept is the target's mean; beta_k = s_k (U^T t)_k / (s_k^2 + alpha)
    t = 2.0 * y - 1.0 if task == "classification" else y.astype(float)
    s2 = np.sum(z**2, axis=0)  # s_k^2: the columns of U S are orthogonal
    zt = z.T @ (t - t.mean())  # s_k (U^T t)_k
    beta = zt[None, :] / (s2[None, :] + alphas[:, None])  # (n_alpha, r)
    out = t.mean() + beta @ z_test.T  # (n_alpha, n_test)
    return 1.0 / (1.0 + np.exp(-out)) if task == "classification" else out


def inner_splits(task: str, y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> list:
    """Inner (train, validation) index pairs: stratified for labels, groups never split."""
    if task == "classification":
        n = max(2, min(folds, int(np.bincount(y.astype(int)).min())))
        cv = StratifiedKFold(n, shuffle=True, random_state=seed) if groups is None \
            else StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    else:
        n = max(2, min(folds, len(y) if groups is None else len(np.unique(groups))))
        cv = KFold(n, shuffle=True, random_state=seed) if groups is None else GroupKFold(n)
    return list(cv.split(np.zeros(len(y)), y, groups))


def inner_metric(task: str, y: np.ndarray, scores: np.ndarray) -> float:
    """``SELECTION[task]`` as ``evaluation.compute`` defines it, alone and fast (every grid value is scored)."""
    if task == "classification":
        pos = y == 1
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        # Mann-Whitney: the share of (positive, negative) pairs ranked right, ties counting half
        return float((rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float("nan") if np.ptp(y) == 0 or np.ptp(scores) == 0 else float(pearsonr(y, scores)[0])


@dataclass(frozen=True)
class Choice:
    """The inner CV's result: the grid, the mean inner metric at each value, the chosen value."""

    name: str
    metric: str
    grid: np.ndarray
    scores: np.ndarray  # mean over inner folds, per grid value
    index: int

    @property
    def value(self) -> float:
        return float(self.grid[self.index])

    @property
    def edge(self) -> str:
        """'weakest' / 'strongest' when the chosen penalty is the grid's first / last, else ''."""
        return {0: "weakest", len(self.grid) - 1: "strongest"}.get(self.index, "")

    def info(self) -> dict:
        return {PENALTY[self.name]: self.value, "penalty_edge": self.edge,
                f"inner_{self.metric}": float(self.scores[self.index])}


def choose(name: str, task: str, x: np.ndarray, y: np.ndarray, splits: list, grid: np.ndarray) -> Choice:
    """Mean inner-fold metric of every grid value (standardised and rotated within each inner fold)."""
    _check(name, task)
    metric = SELECTION[task]
    per_fold = []
    for fit_idx, val_idx in splits:
        basis, z_fit = Basis.fit(x[fit_idx])
        scores = path_scores(name, task, z_fit, y[fit_idx], basis.transform(x[val_idx]), grid)
        per_fold.append([inner_metric(task, y[val_idx], s) for s in scores])
    with np.errstate(invalid="ignore"):
        mean = np.array([np.nan if np.isnan(col).all() else np.nanmean(col) for col in np.array(per_fold).T])
    index = int(np.argmax(np.where(np.isnan(mean), -np.inf, mean)))  # the first of ties, as GridSearchCV
    return Choice(name, metric, grid, mean, index)


def fit_predict(name: str, task: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                seed: int = 0, inner_folds: int = INNER_FOLDS, groups: np.ndarray | None = None,
                warn: bool = True, label: str | None = None) -> tuple[np.ndarray, dict]:
    """Nested-CV fit on the training rows; scores for the test rows and the choice made (for the log).

    ``warn``: log a warning when the chosen penalty is on an edge of its grid (permuted-label
    controls pass False: their inner metric is flat, and the edge says nothing). ``label``: what
    the warning calls the fit (default: ``baseline '<name>'``).
    """
    _check(name, task)
    if task == "classification" and np.bincount(y_train.astype(int), minlength=2).min() < 2:
        # a class with fewer than two training subjects: no penalty can be chosen; predict the
        # training class rate, which scores at chance, rather than fail the whole set-up
        return np.full(len(x_test), float(np.mean(y_train))), {"fallback": "class prior"}
    basis, z_train = Basis.fit(x_train)
    grid = penalty_grid(name, basis.s2)
    choice = choose(name, task, x_train, y_train, inner_splits(task, y_train, groups, inner_folds, seed), grid)
    if choice.edge:
        (log.warning if warn else log.debug)(
            "%s: the inner CV chose %s=%.3g, the %s penalty of its grid (%s from %.3g to %.3g, "
            "inner %s %.3f): %s", label or f"baseline {name!r}", PENALTY[name], choice.value, choice.edge, PENALTY[name], grid.min(),
            grid.max(), choice.metric, choice.scores[choice.index], EDGE_MEANS[choice.edge])
    scores = path_scores(name, task, z_train, y_train, basis.transform(x_test), grid[choice.index:choice.index + 1])[0]
    return scores, choice.info()
