"""Who is labelled, which set-ups exist, and how subjects are folded.

A set-up is a list of (train subjects, test subjects) folds:

``agnostic``
    stratified k-fold over every labelled subject (all drugs together).
``drug-<value>``
    stratified k-fold within the subjects of one drug (one model per drug).
``site-<value>``
    cross-site: train on every other site (or dataset), test on this one.

Splits are always by subject, so a subject's windows never sit on both sides; each
repeat reshuffles with its own seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..datasets.participants import bare, read_participants
from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cohort:
    labels: pd.Series  # float label per bare subject label, sorted
    task: str  # classification | regression
    table: pd.DataFrame  # participants rows of the labelled subjects, indexed by bare label
    dropped: tuple[str, ...]  # subjects without a label (when missing_labels is 'drop')


def load_cohort(participants: str | Path, target: str, task: str = "auto", missing_labels: str = "error",
                subjects: list[str] | None = None) -> Cohort:
    """Labels of ``target`` from participants.tsv for ``subjects`` (default: all rows)."""
    # read_participants checks participant_id: present, each subject once, as sub-<label>
    table = read_participants(participants, dtype={"participant_id": str})
    if target not in table.columns:
        raise InputError(participants, f"needs columns 'participant_id' and '{target}' (has {list(table.columns)})")
    table = table.assign(subject=[bare(p) for p in table["participant_id"]]).set_index("subject")
    if subjects is not None:
        absent = sorted(set(subjects) - set(table.index))
        if absent:
            raise InputError(participants, f"no row for subjects {absent}")
        table = table.loc[sorted(subjects)]
    missing = sorted(table.index[table[target].isna()])
    if missing and missing_labels != "drop":
        raise InputError(participants, f"column '{target}' has no label for subjects {missing}; "
                                       "set finetune.missing_labels: drop to leave them out of fine-tuning")
    table = table.drop(index=missing).sort_index()
    try:
        labels = table[target].astype(float)
    except ValueError:
        raise InputError(participants, f"column '{target}' must be numeric (0/1 for classes)") from None
    values = np.unique(labels)
    if task == "auto":
        task = "classification" if len(values) <= 2 else "regression"
    if task == "classification" and not set(values) <= {0.0, 1.0}:
        raise InputError(participants, f"column '{target}' must hold 0/1 for classification; found {values.tolist()}")
    if len(values) < 2:
        raise InputError(participants, f"column '{target}' has a single value {values.tolist()}: nothing to predict")
    return Cohort(labels=labels, task=task, table=table, dropped=tuple(missing))


def setup_names(cohort: Cohort, drug_column: str | None, site_column: str | None) -> list[str]:
    """Every set-up the cohort supports: agnostic, one per drug, one per held-out site."""
    names = ["agnostic"]
    for prefix, column in (("drug", drug_column), ("site", site_column)):
        if column and column in cohort.table.columns:
            values = sorted(cohort.table[column].dropna().astype(str).unique())
            if len(values) > 1:
                names += [f"{prefix}-{v}" for v in values]
    return names


def _stratify(labels: pd.Series, task: str) -> np.ndarray:
    if task == "classification":
        return labels.to_numpy().astype(int)
    bins = min(4, max(1, len(labels) // 5))  # quantile bins keep folds' target ranges alike
    return pd.qcut(labels.rank(method="first"), bins, labels=False).to_numpy()


def folds(cohort: Cohort, setup: str, k: int, seed: int, drug_column: str | None = None,
          site_column: str | None = None) -> list[tuple[list[str], list[str]]]:
    """(train, test) subject lists of ``setup`` for one repeat (``seed``)."""
    table, labels = cohort.table, cohort.labels
    if setup.startswith("site-"):
        held = table[site_column].astype(str) == setup[len("site-"):]
        return [(sorted(table.index[~held]), sorted(table.index[held]))]
    if setup.startswith("drug-"):
        labels = labels[table[drug_column].astype(str) == setup[len("drug-"):]]
    elif setup != "agnostic":
        raise ValueError(f"unknown set-up {setup!r}")
    strata = _stratify(labels, cohort.task)
    subjects = labels.index.to_numpy()
    if len(subjects) < 2:
        raise InputError("finetune.setups", f"set-up {setup!r}: {len(subjects)} labelled subject(s), too few to "
                                            "cross-validate (at least 2); leave it out of finetune.setups")
    from sklearn.model_selection import KFold, StratifiedKFold  # here: the plan reads set-up names only

    n_splits = min(k, int(np.bincount(strata).min()))
    if n_splits < 2:  # a class with one subject: unstratified folds (the log says so; scores are near chance)
        log.warning("set-up %s: a class has fewer than 2 subjects; folds are not stratified", setup)
        splitter = KFold(min(k, len(subjects)), shuffle=True, random_state=seed)
    else:
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    return [(sorted(subjects[tr]), sorted(subjects[te])) for tr, te in splitter.split(subjects, strata)]


def inner_split(cohort: Cohort, train: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training subjects -> (fit, validation) for early stopping, stratified where possible."""
    if len(train) < 2:  # nothing to hold out: stop on the training subject itself (logged)
        log.warning("only %d training subject(s): early stopping watches the training loss", len(train))
        return list(train), list(train)
    from sklearn.model_selection import train_test_split

    labels = cohort.labels.loc[train]
    strata = _stratify(labels, cohort.task)
    n_val = min(len(train) - 1, max(1, int(round(fraction * len(train)))))
    ok = np.bincount(strata).min() >= 2 and n_val >= len(np.unique(strata))
    fit, val = train_test_split(np.asarray(train), test_size=n_val, random_state=seed,
                                stratify=strata if ok else None)
    return sorted(fit), sorted(val)
