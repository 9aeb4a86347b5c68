"""The one reader of BIDS ``participants.tsv``: read and check it, take a column as subject
labels, and encode such a column as a training target (``TargetEncoding``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import read_tsv

TARGET_KINDS = ("classification", "regression")


def bare(subject) -> str:
    """A subject label without the ``sub-`` prefix ("sub-01" and "01" both give "01")."""
    return str(subject).removeprefix("sub-")


def read_participants(path: str | Path, dtype: Any = str) -> pd.DataFrame:
    """``participants.tsv`` checked: readable, ``participant_id``, each subject once, as ``sub-<label>``.

    ``dtype`` is passed to ``pandas.read_csv``: by default every column is text; pass
    ``{"participant_id": str}`` to let pandas infer the types of the other columns.
    """
    table = _read(path, dtype=dtype)
    ids = table["participant_id"]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna())[0]) + 2  # line in the file: header is line 1
        raise InputError(path, f"participant_id is empty on line {row}")
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero(ids == first)]
        others = sorted(set(repeated) - {first})
        more = f" (also repeated: {others[:5]})" if others else ""
        raise InputError(path, f"{first} is listed {len(lines)} times (lines {lines}); each participant must appear once{more}")
    unprefixed = ids[~ids.str.startswith("sub-")]
    if len(unprefixed):
        raise InputError(path, f"participant_id {unprefixed.iloc[0]!r} does not start with 'sub-'")
    return table


def participant_columns(path: str | Path) -> list[str]:
    """The column names of ``participants.tsv``, from its header alone (the workflow's plan-time check
    of the columns the config names); the same errors as ``read_participants`` for a missing or
    unreadable table, or one without ``participant_id``. The rows are checked by the jobs that read them."""
    return list(_read(path, dtype=str, nrows=0).columns)


def _read(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    try:
        table = read_tsv(path, **kwargs)
    except FileNotFoundError:
        raise InputError(path, "participants table not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable tab-separated table ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if "participant_id" not in table.columns:
        raise InputError(path, f"no participant_id column (columns: {list(table.columns)[:10]})")
    return table


def subject_labels(participants: pd.DataFrame | str | Path, column: str) -> pd.Series:
    """One label per subject from a BIDS participants table, keyed by bare subject label.

    Use as ``make_splits(..., stratify=subject_labels(participants, "response"))``.
    """
    path = participants if isinstance(participants, (str, Path)) else None
    # the other columns' types inferred, so numeric labels read as numbers ("1.50" is 1.5)
    table = read_participants(path, dtype={"participant_id": str}) if path is not None else participants
    where = path if path is not None else "participants"
    for needed in ("participant_id", column):
        if needed not in table.columns:
            raise InputError(where, f"participants table has no column '{needed}' (columns: {list(table.columns)})",
                             settings=["column"] if needed == column else [])
    if table[column].isna().any():
        missing = table.loc[table[column].isna(), "participant_id"].tolist()
        raise InputError(where, f"column '{column}' is missing for {missing[:10]}; every subject needs a label to stratify",
                         settings=["column"])
    return pd.Series(table[column].to_numpy(), index=[bare(p) for p in table["participant_id"]], name=column)


@dataclass(frozen=True)
class TargetEncoding:
    """A column of labels as a training target, and model outputs read back as labels.

    ``classification``: ``classes`` are the labels as text, sorted; a label is encoded as
    the index of its class. ``regression``: a label is standardised, ``(label - mean) / std``,
    and an output decoded as ``output * std + mean``.

    Build it with ``fit``, or directly from statistics the caller computed itself.
    """

    kind: str
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, kind: str, labels: Iterable[Any]) -> TargetEncoding:
        """The classes of ``labels``, or their mean and population standard deviation.

        Regression takes ``np.mean`` and ``np.std`` of the labels as float64 (a NaN label is
        not skipped: both become NaN); a standard deviation of 0 becomes 1, a NaN one stays.
        """
        if kind == "classification":
            return cls(kind, classes=tuple(sorted({str(label) for label in labels})))
        if kind != "regression":
            raise ValueError(f"'kind' must be one of {TARGET_KINDS}; {kind!r} was provided")
        values = np.asarray(labels, dtype=np.float64)
        return cls(kind, mean=float(np.mean(values)), std=float(np.std(values)) or 1.0)

    def encode(self, labels: Iterable[Any]) -> np.ndarray:
        """Class indices (int64) or standardised labels (float64), in the order given."""
        if self.kind == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            texts = [str(label) for label in labels]
            unknown = sorted(set(texts) - set(index))
            if unknown:
                raise ValueError(f"labels {unknown[:10]} are not among the classes {list(self.classes)}")
            return np.array([index[t] for t in texts], dtype=np.int64)
        return (np.asarray(labels, dtype=np.float64) - self.mean) / self.std

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Labels of encoded outputs: class names of class indices, or ``outputs * std + mean``
        (in the outputs' float type)."""
        if self.kind == "classification":
            return np.asarray(self.classes)[np.asarray(outputs, dtype=np.int64)]
        return outputs * self.std + self.mean
