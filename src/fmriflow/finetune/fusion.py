"""BrainSymphony's fused probe row as late fusion of its unimodal probes (``brainsymphony.fusion: mean | late``).

Each modality keeps its own frozen probe (``fmriflow.finetune.probe``, fitted on the training subjects
exactly as the unimodal rows ``probe_symphony_fmri`` / ``probe_symphony_sc`` are), and the fused score of a
test subject is the weighted mean ``w * p_fMRI + (1 - w) * p_SC`` of the two probes' scores. With ``mean``
(the default) ``w`` is 0.5; with ``late`` it is chosen by an inner cross-validation on the training subjects
only (the outer test fold never informs it): on each inner split both probes are refitted (their penalties
again by their own nested CV) on the inner training subjects and score the inner validation ones; every ``w`` of ``WEIGHTS`` gets the mean over inner
folds of the selection metric (``baselines.SELECTION``: AUROC for classes), as the penalties are chosen.

Why late and supervised: BrainSymphony's adaptive gate weighs the modalities per task; the unsupervised
gate of a frozen pretrained model cannot know the task, and one linear model over both modalities'
features (``brainsymphony.fusion: early``) has twice the features for the same few training subjects
(measured in benchmarks/README.md: on the split demo it did no better than the stronger modality alone).
Late fusion fits no more parameters per probe than a unimodal row, and one weight on top.

Why ``mean`` by default: on every split demo measured (24 and 96 subjects, benchmarks/README.md) the equal
weights scored above both the early row and the inner-CV weight, which with 3-15 validation subjects per inner
fold swings between the grid's ends from fold to fold; 0.5 is also the pretrained gate's value (0.49).

Ties (the inner AUROC of a few validation subjects takes few values) go to the weight nearest 0.5, then
the smaller: equal weighting is the choice that needs no evidence, and the data must beat it strictly to
move ``w``. A test subject without a connectome takes the fMRI probe's score (``w`` = 1 for it).
"""

from __future__ import annotations

import logging

import numpy as np

from .. import baselines
from . import probe as probes

log = logging.getLogger(__name__)
WEIGHTS = np.linspace(0.0, 1.0, 11)  # w, the fMRI probe's share of the fused score (late: chosen by inner CV)
EQUAL = np.array([0.5])  # mean: no choice to make
TIE_ATOL = 1e-12  # inner means equal up to float summation order are ties


def weighted(w: float, p_fmri: np.ndarray, p_sc: np.ndarray) -> np.ndarray:
    return w * p_fmri + (1.0 - w) * p_sc


def pick(weights: np.ndarray, scores: np.ndarray) -> int:
    """Index of the best mean inner metric (NaN never wins); ties: nearest 0.5, then the smaller weight."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    tied = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0.0, atol=TIE_ATOL))
    return int(min(tied, key=lambda i: (abs(weights[i] - 0.5), weights[i])))


def inner_scores(task: str, fmri: dict, sc: dict, labels, train: list[str], seed: int,
                 weights: np.ndarray = WEIGHTS) -> np.ndarray:
    """Mean over inner folds of the selection metric of every weight's fused score, on ``train``
    (subjects with both embeddings); inner folds as the probes' own (``baselines.inner_splits``, ``seed``)."""
    y = np.asarray([labels[s] for s in train], dtype=float)
    per_fold = []
    for fit_idx, val_idx in baselines.inner_splits(task, y, None, baselines.INNER_FOLDS, seed):
        fit, val = [train[i] for i in fit_idx], [train[i] for i in val_idx]
        p_f, _ = probes.fit_predict(task, fmri, labels, fit, val, seed, warn=False)
        p_s, _ = probes.fit_predict(task, sc, labels, fit, val, seed, warn=False)
        per_fold.append([baselines.inner_metric(task, y[val_idx], weighted(w, p_f, p_s)) for w in weights])
    per_fold = np.array(per_fold)
    with np.errstate(invalid="ignore"):
        return np.array([np.nan if np.isnan(col).all() else np.nanmean(col) for col in per_fold.T])


def fit_predict(task: str, fmri: dict, sc: dict, labels, train: list[str], test: list[str], seed: int,
                name: str = "probe_symphony_fused", warn: bool = True,
                weights: np.ndarray = WEIGHTS) -> tuple[np.ndarray, dict]:
    """Late-fusion scores of the ``test`` subjects (all with an fMRI embedding) and the fit's log entry.

    ``fmri`` / ``sc``: subject -> embedding (``sc`` lacks subjects without a connectome); ``labels``:
    indexable by subject (a permuted control passes its shuffled ones); ``seed``: the repeat's, as the
    unimodal rows'; ``warn``: log the choice (controls pass False); ``weights``: the grid (a single value
    forces ``w``).
    """
    weights = np.asarray(weights, dtype=float)
    p_f, _ = probes.fit_predict(task, fmri, labels, [s for s in train if s in fmri], test, seed, name, warn=False)
    with_sc = [s for s in test if s in sc]
    p_s = p_f.copy()
    if with_sc:
        p_s[[s in sc for s in test]], _ = probes.fit_predict(task, sc, labels, [s for s in train if s in sc],
                                                            with_sc, seed, name, warn=False)
    both = [s for s in train if s in fmri and s in sc]
    scores = inner_scores(task, fmri, sc, labels, both, seed, weights) if len(weights) > 1 and both \
        else np.full(len(weights), np.nan)  # no inner CV ran: nothing to log as its score
    index = pick(weights, scores)
    w = float(weights[index])
    edge = {0.0: "sc only", 1.0: "fmri only"}.get(w, "")
    if edge and len(weights) > 1:
        (log.warning if warn else log.debug)("%s: the inner CV chose w=%.1f, %s (inner %s %.3f; equal weights %.3f)",
                                          name, w, edge, baselines.SELECTION[task], scores[index],
                                          scores[int(np.argmin(np.abs(weights - 0.5)))])
    kind = "late fusion" if len(weights) > 1 else "mean fusion" if w == 0.5 else "fixed-weight fusion"
    info = {"probe": kind, "w_fmri": w, "weight_edge": edge,
            f"inner_{baselines.SELECTION[task]}": float(scores[index])}
    return weighted(w, p_f, p_s), info
