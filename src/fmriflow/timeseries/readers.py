"""Readers of ready-made region time series: one function per format, each returning a ``RegionSeries``.

Formats (``input.timeseries.format``):

``xcpd``
    XCP-D's ``<source_entities>_space-<S>_atlas-<A>_stat-mean_timeseries.tsv`` (``seg-<A>`` in
    XCP-D 0.7-0.10): tab-separated, a header row of region names, one row per kept volume,
    ``n/a`` for a region below XCP-D's coverage threshold. TR from the JSON sidecar beside it
    (``RepetitionTime``, or ``SamplingFrequency`` in Hz).
``cpac``
    C-PAC / ABIDE-Preprocessed ROI means (``<SITE>_<SUBID>_rois_<atlas>.1D``): whitespace- (or
    comma-) separated numbers, one row per volume, one column per ROI, after a ``#`` header of
    ROI labels (``#1 #2 ...``, or ``# Mean_1 Mean_2 ...`` from AFNI's 3dROIstats). The files carry
    no TR: a JSON sidecar beside the file, or ``input.timeseries.repetition_time``.
``table``
    plain per-run ``.tsv`` / ``.csv`` (a header row of region names or atlas index numbers) or
    ``.npy`` (time x regions, no names: the atlas table's order), with a JSON sidecar giving
    ``RepetitionTime`` and ``Atlas``.

The readers only parse; ``check_series`` (fmriflow.timeseries.regions) checks the result
against the atlas.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

FORMATS = ("xcpd", "cpac", "table")
TABLE_EXTENSIONS = (".tsv", ".csv", ".npy")

# AFNI 3dROIstats writes "Mean_<label>"; ABIDE's C-PAC files "#<label>"
_LABEL_PREFIXES = re.compile(r"^(#\s*)?(Mean_|NZMean_|Median_)?")


@dataclass
class RegionSeries:
    """One run's region time series as read: ``values`` (time x regions), the file's region labels
    (None when it has none), the TR it declares (None when it declares none) and what else it said."""

    values: np.ndarray
    labels: list[str] | None
    tr: float | None
    atlas: str | None = None  # the atlas the file (or its sidecar) names
    sidecar: Path | None = None
    notes: dict = field(default_factory=dict)


def sidecar_of(path: str | Path) -> Path:
    """The JSON beside a data file: same name, extension replaced (``.tsv``, ``.1D``, ``.npy`` ...)."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".json")


def read_series(path: str | Path, fmt: str) -> RegionSeries:
    """Read one run's file in ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"'fmt' must be one of {FORMATS}; {fmt!r} was provided")
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "region time series file not found")
    series = {"xcpd": _read_xcpd, "cpac": _read_cpac, "table": _read_table}[fmt](path)
    _add_sidecar(series, path, required=fmt == "table")
    return series


def _read_xcpd(path: Path) -> RegionSeries:
    frame = _read_delimited(path, "\t")
    return RegionSeries(_numbers(frame, path), [str(c) for c in frame.columns], None)


def _read_table(path: Path) -> RegionSeries:
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise InputError(path, f"a plain region time series must be one of {', '.join(TABLE_EXTENSIONS)}; "
                               f"got {suffix or 'no extension'}")
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(path, f"not a readable NumPy array ({exc})") from exc
        if not np.issubdtype(values.dtype, np.number):
            raise InputError(path, f"the array must hold numbers, got dtype {values.dtype}")
        return RegionSeries(np.asarray(values, dtype=np.float64), None, None)
    frame = _read_delimited(path, "," if suffix == ".csv" else "\t")
    return RegionSeries(_numbers(frame, path), [str(c) for c in frame.columns], None)


def _read_cpac(path: Path) -> RegionSeries:
    """AFNI-style 1D: ``#`` lines before the numbers; the last one with tokens is the label header."""
    labels, rows = None, []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            if text.startswith("#"):
                if rows:
                    raise InputError(path, f"line {number}: a '#' line after the data (only a header may start with #)")
                tokens = [t for t in re.split(r"[\s,]+", text) if t and t != "#"]
                if tokens and not any("/" in t for t in tokens):  # 3dROIstats' file-name comment lines carry paths
                    labels = [_LABEL_PREFIXES.sub("", t) for t in tokens]
                continue
            fields = [t for t in re.split(r"[\s,]+", text) if t]
            try:
                rows.append([float(t) for t in fields])
            except ValueError:
                raise InputError(path, f"line {number}: not a row of numbers ({text[:80]!r})") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        first = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise InputError(path, f"rows have different numbers of columns ({sorted(widths)}); the first that differs is "
                               f"data row {first + 1}")
    values = np.array(rows, dtype=np.float64).reshape(len(rows), widths.pop() if widths else 0)
    return RegionSeries(values, labels, None)


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, na_values=["n/a", "NaN", "nan"], keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable {'comma' if sep == ',' else 'tab'}-separated table "
                               f"({type(exc).__name__}: {exc})") from exc


def _numbers(frame: pd.DataFrame, path: Path) -> np.ndarray:
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        column = bad[0]
        values = pd.to_numeric(frame[column], errors="coerce")
        row = int(np.flatnonzero(values.isna() & frame[column].notna())[0])
        raise InputError(path, f"column {column!r} holds {frame[column].iloc[row]!r} on data row {row + 1}: every value "
                               "must be a number or n/a (is the header row missing, or the separator not a "
                               f"{'comma' if path.suffix.lower() == '.csv' else 'tab'}?)")
    return frame.to_numpy(dtype=np.float64)


def _add_sidecar(series: RegionSeries, path: Path, required: bool) -> None:
    """TR and atlas from the JSON beside the file, when there is one (required for plain tables)."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        if required:
            raise InputError(path, f"no JSON sidecar {sidecar.name} beside it: a plain region time series needs one "
                                   'giving RepetitionTime (seconds) and Atlas, e.g. {"RepetitionTime": 2.0, '
                                   '"Atlas": "Schaefer100"}')
        return
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(sidecar, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(sidecar, f"must hold a JSON object, got {type(meta).__name__}")
    series.sidecar = sidecar
    series.tr = _tr_of(meta, sidecar)
    atlas = meta.get("Atlas")
    series.atlas = None if atlas is None else str(atlas)
    if required and series.atlas is None:
        raise InputError(sidecar, "lacks Atlas: the name of the atlas whose regions the columns are")


def _tr_of(meta: dict, sidecar: Path) -> float | None:
    if "RepetitionTime" in meta:
        tr = meta["RepetitionTime"]
        key = "RepetitionTime"
    elif isinstance(meta.get("SamplingFrequency"), (int, float)) and meta["SamplingFrequency"] > 0:
        tr = 1.0 / meta["SamplingFrequency"]
        key = "SamplingFrequency"
    else:
        return None
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not np.isfinite(tr) or tr <= 0:
        raise InputError(sidecar, f"{key} must be a positive number (seconds for RepetitionTime, Hz for "
                                  f"SamplingFrequency); got {meta[key]!r}")
    return float(tr)
