"""The frozen-probe evaluation: a linear model on the frozen encoder's pooled embeddings.

The question it answers is the one FMMTC's fine-tuning cannot: does the encoder's
representation, untouched, carry the label? (Brainmarks' frozen-probe protocol, beside the
fine-tuned variants and the FC baselines, on the same folds.)

``probe``
    the encoder in use (this run's pretrained model, or a ``finetune.encoder`` bundle).
``probe_random``
    its control: the same probe on the embeddings of a randomly initialised encoder of the
    same shape (seeded, the ``no_pretrain`` variant's encoder). Pretraining is worth its GPUs
    where ``probe`` beats ``probe_random``.

Pooling: each window's embedding is the encoder's own pooled output (``BrainLM.encode``: the
mean over its patch tokens by default, the one vector the pretrained model was built to give
per window and the one every FMMTC variant receives); a subject's is the mean over its
windows. A mean weights every region's tokens and every stretch of the scan alike, has
nothing to fit (so nothing of the test subjects reaches the features), does not depend on
how many windows a subject has, and gives one row per subject, the unit the folds split and
the FC baselines fit on. It is summed in float64 over the windows in their dataset order, so
the same embeddings give the same bytes.

The model is the FC baselines' (``fmriflow.baselines``): L2 logistic regression for
classes, ridge for continuous targets, the penalty chosen by inner-CV AUROC / Pearson r on
the training subjects only (nested CV), with the same standardisation and grid.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import baselines

log = logging.getLogger(__name__)
PROBES = {"probe": "pretrained", "probe_random": "random"}  # row name -> encoder of its embeddings
MODEL = {"classification": "logistic", "regression": "ridge"}  # the probe's linear model by task


def subject_embeddings(ts: np.ndarray, rows_of: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each subject's embedding: the float64 mean of its windows' pooled embeddings (rows of ``ts``)."""
    return {s: np.asarray(ts[rows], dtype=np.float64).mean(axis=0) for s, rows in rows_of.items()}


def fit_predict(task: str, embeddings: dict[str, np.ndarray], labels, train: list[str], test: list[str],
                seed: int, name: str = "probe", warn: bool = True) -> tuple[np.ndarray, dict]:
    """Scores of the ``test`` subjects from a probe fitted by nested CV on the ``train`` subjects.

    ``labels``: the subjects' labels (indexable by subject, e.g. the cohort's Series); ``seed``:
    the inner folds' (the repeat's seed, as for the FC baselines); ``name``: the row, for the log. Returns the scores and the
    fit's log entry (the model, the chosen penalty and its inner metric).
    """
    model = MODEL[task]
    x_train = np.stack([embeddings[s] for s in train])
    x_test = np.stack([embeddings[s] for s in test])
    y_train = np.asarray([labels[s] for s in train], dtype=float)
    if not np.ptp(x_train, axis=0).any():
        # an encoder that gives every training subject the same embedding carries nothing to fit (and leaves
        # no feature after standardising): predict the training mean, which scores at chance
        if warn:
            log.warning("%s: the training subjects' embeddings are all equal; it predicts the training mean", name)
        return np.full(len(test), float(y_train.mean())), {"probe": model, "fallback": "constant embeddings"}
    scores, chosen = baselines.fit_predict(model, task, x_train, y_train, x_test, seed=seed, label=f"{name} ({model})",
                                           warn=warn)
    return scores, {"probe": model, **chosen}
