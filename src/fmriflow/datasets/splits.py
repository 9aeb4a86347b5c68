"""Subject-level splits, shared by the region and voxel datasets.

``make_splits`` assigns subjects (never windows or runs) to train/val/test, seeded and
optionally stratified; ``splits.tsv`` (``read_splits``, ``check_splits``) holds that table,
subject labels bare ("01") and kept as text. ``check_runs`` checks the runs a dataset is
built from against it and orders them train, val, test, so each split is one contiguous
block of samples or frames.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..io import read_tsv
from .participants import bare

SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.tsv"


def make_splits(
    subjects: Iterable[str],
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: Mapping[str, Any] | pd.Series | Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Assign subjects to train/val/test, seeded and optionally stratified.

    Parameters
    ----------
    subjects
        Subject labels, with or without the ``sub-`` prefix; repeats are ignored, and
        the order does not matter (subjects are sorted before the seeded shuffle).
    fractions
        Target fractions of subjects in (train, val, test), summing to 1. Split sizes
        are the largest-remainder rounding of ``fractions * n``; with 3 or more subjects
        every split with a positive fraction gets at least one subject.
    seed
        Seed of the shuffle: the same subjects, fractions and seed give the same splits.
    stratify
        A label per subject (mapping or Series keyed by subject, or a sequence aligned
        with ``subjects``), e.g. from ``subject_labels(participants, "response")``. Each
        label's count in each split is within one subject of its share of that split
        (a controlled rounding of the label x split table).

    Returns
    -------
    DataFrame with columns subject, split (and stratum when stratified), sorted by subject.
    """
    subjects = list(subjects)
    labels = _stratum_labels(subjects, stratify)
    subs = sorted({bare(s) for s in subjects})
    if not subs:
        raise ValueError("make_splits needs at least one subject")
    fractions = _check_fractions(fractions)
    rng = np.random.default_rng(seed)

    n = len(subs)
    totals = _apportion(n, fractions, at_least_one=n >= 3)
    strata = sorted({labels[s] for s in subs}) if labels is not None else [""]
    members = {k: [s for s in subs if (labels[s] if labels is not None else "") == k] for k in strata}
    sizes = np.array([len(members[k]) for k in strata])
    counts = _controlled_rounding(sizes, totals, rng)

    split_of: dict[str, str] = {}
    for row, stratum in enumerate(strata):
        order = rng.permutation(len(members[stratum]))
        shuffled = [members[stratum][i] for i in order]
        bounds = np.cumsum(counts[row])
        for position, subject in enumerate(shuffled):
            split_of[subject] = SPLITS[int(np.searchsorted(bounds, position, side="right"))]
    frame = pd.DataFrame({"subject": subs, "split": [split_of[s] for s in subs]})
    if labels is not None:
        frame["stratum"] = [labels[s] for s in subs]
    frame.attrs.update(seed=int(seed), fractions=list(fractions), stratified=labels is not None)
    return frame


def check_splits(splits: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A subject -> split table (DataFrame or ``splits.tsv``) checked: bare labels, known splits, no repeats."""
    path = None if isinstance(splits, pd.DataFrame) else Path(splits)
    table = read_splits(path) if path is not None else splits
    where = path if path is not None else "splits"
    missing = {"subject", "split"} - set(table.columns)
    if missing:
        raise InputError(where, f"splits table lacks columns {sorted(missing)} (columns: {list(table.columns)})")
    table = table.copy()
    table["subject"] = [bare(s) for s in table["subject"]]
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise InputError(where, f"unknown split names {bad}; allowed: {list(SPLITS)}")
    repeated = sorted(table.loc[table["subject"].duplicated(), "subject"])
    if repeated:
        raise InputError(where, f"subjects listed more than once in the splits table: {repeated[:10]}")
    return table.sort_values("subject", kind="stable").reset_index(drop=True)


def read_splits(path: str | Path) -> pd.DataFrame:
    """A ``splits.tsv`` (a dataset folder or the file itself), subject labels kept as text."""
    path = Path(path)
    return read_tsv(path / SPLITS_FILE if path.is_dir() else path, dtype={"subject": str, "split": str})


def check_runs(
    runs: Sequence[Mapping[str, Any]],
    split_of: Mapping[str, str],
    needs: Sequence[str],
    name_of: Callable[[Mapping[str, Any]], str],
    fields: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One spec per run (run, subject, split and its ``fields``), in split order.

    Parameters
    ----------
    runs
        One mapping per run, with the keys ``needs`` lists (``subject`` may be left out:
        it is taken from the run key).
    split_of
        Bare subject label -> split; every run's subject must be in it.
    needs
        The keys a run has, as the error lists them.
    name_of
        The run's name in errors (its file).
    fields
        The rest of the run's spec from the run and its name; raises ``InputError`` for a
        bad value.
    """
    specs = []
    for number, run in enumerate(runs):
        missing = set(needs) - {"subject"} - set(run)
        if missing:
            raise InputError("runs", f"run #{number} lacks {sorted(missing)} (needs {', '.join(needs)}; "
                                     f"subject may be left out); it has {sorted(map(str, run))}")
        name = name_of(run)
        subject = run_subject(run, split_of, name)
        specs.append({"run": str(run["run"]), "subject": subject, "split": split_of[subject], **fields(run, name)})
    return in_split_order(specs)  # splits form contiguous blocks of samples


def run_subject(run: Mapping[str, Any], split_of: Mapping[str, str], name: str) -> str:
    """A run's bare subject label (its ``subject``, else from the run key); the subject must have a split."""
    from ..naming import subject_of

    subject = bare(run.get("subject") or subject_of(str(run["run"])))
    if subject not in split_of:
        raise InputError(name, f"subject '{subject}' of run {run['run']} has no split in the splits table")
    return subject


def in_split_order(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run specs with train, val and test in contiguous blocks, runs in key order inside; no run twice."""
    keys = [s["run"] for s in specs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError("runs", f"runs listed more than once: {repeated[:10]}; each run may be listed once")
    return sorted(specs, key=lambda s: (SPLITS.index(s["split"]), s["run"]))


# --------------------------------------------------------------------------- helpers


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or f[0] <= 0 or abs(f.sum() - 1) > 1e-6:
        raise SettingError("fractions", f"'fractions' must be 3 non-negative numbers (train > 0) summing to 1; {tuple(fractions)} was provided")
    return f / f.sum()


def _stratum_labels(subjects: list, stratify) -> dict[str, str] | None:
    if stratify is None:
        return None
    if isinstance(stratify, (Mapping, pd.Series)):
        items = stratify.items()
    else:
        stratify = list(stratify)
        if len(stratify) != len(subjects):
            raise SettingError("stratify", f"'stratify' has {len(stratify)} labels for {len(subjects)} subjects")
        items = zip(subjects, stratify)
    labels: dict[str, str] = {}
    for subject, label in items:
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise InputError("stratify", f"subject '{subject}' has no stratification label ({label!r} was provided)",
                             settings=["stratify"])
        label, subject = str(label), bare(subject)
        if labels.setdefault(subject, label) != label:
            raise InputError("stratify", f"subject '{subject}' has two stratification labels: {labels[subject]!r} and "
                                         f"{label!r}; each subject has one", settings=["stratify"])
    missing = sorted({bare(s) for s in subjects} - set(labels))
    if missing:
        raise InputError("stratify", f"no stratification label for subjects {missing[:10]}; every subject needs one "
                                     f"(labels were given for {len(labels)} subjects)", settings=["stratify"])
    return labels


def _apportion(n: int, fractions: np.ndarray, *, at_least_one: bool) -> np.ndarray:
    """Largest-remainder rounding of ``n * fractions``; optionally no empty split."""
    quota = np.round(n * fractions, 9)
    counts = np.floor(quota).astype(int)
    remainder = quota - counts
    for s in sorted(range(len(counts)), key=lambda s: (-remainder[s], s))[: n - counts.sum()]:
        counts[s] += 1
    if at_least_one:
        for s in np.flatnonzero((counts == 0) & (fractions > 0)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[s] += 1
    return counts


def _controlled_rounding(sizes: np.ndarray, totals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer stratum x split counts with the given margins, each cell the floor or ceiling of its share.

    The share table ``sizes * totals / n`` has integer margins, so such a rounding always
    exists (the transportation polytope is integral); random costs pick one, seeded.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = sizes.sum()
    share = np.round(np.outer(sizes, totals) / n, 9)
    low, high = np.floor(share), np.ceil(share)
    n_strata, n_splits = share.shape
    rows = np.kron(np.eye(n_strata), np.ones(n_splits))
    cols = np.kron(np.ones(n_strata), np.eye(n_splits))
    result = milp(
        c=rng.random(share.size),
        constraints=[LinearConstraint(rows, sizes, sizes), LinearConstraint(cols, totals, totals)],
        integrality=np.ones(share.size),
        bounds=Bounds(low.ravel(), high.ravel()),
    )
    if result.x is None:  # cannot happen for integer margins; kept as a guard
        raise RuntimeError(f"no stratified split of {sizes.tolist()} subjects into {totals.tolist()}: {result.message}")
    return np.round(result.x).astype(int).reshape(n_strata, n_splits)
