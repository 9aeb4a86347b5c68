"""Reading the report's inputs: every problem is an InputError naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ..datasets.participants import bare
from ..errors import InputError
from ..io import read_json, read_tsv
from ..provenance import sidecar_path

PathLike = str | Path

QC_NUMBERS = ("n_volumes", "tr", "mean_fd", "max_fd", "fd_threshold", "n_high_motion", "mean_std_dvars")
_DIFF_META_KEYS = ("GroupColumn", "Levels", "N", "Contrast", "Note")  # shown from the group difference's sidecar


def require_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return path


def read_table(path: PathLike, required: Sequence[str], **kwargs: Any) -> pd.DataFrame:
    return _read_frame(path, required, lambda p: read_tsv(p, **kwargs), "TSV")


def read_csv(path: PathLike, required: Sequence[str]) -> pd.DataFrame:
    return _read_frame(path, required, pd.read_csv, "CSV")


def _read_frame(path: PathLike, required: Sequence[str], reader, kind: str) -> pd.DataFrame:
    try:
        table = reader(require_file(path))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable {kind} ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {missing}; has {list(table.columns)}")
    return table


def read_validation(path: PathLike) -> dict:
    try:
        data = read_json(require_file(path))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not {"n_errors", "n_warnings"} <= set(data):
        raise InputError(path, "validation JSON must be an object with 'n_errors' and 'n_warnings'")
    return data


def read_qc(paths: list[PathLike]) -> pd.DataFrame:
    """The preproc QC rows of every run, with ``label`` (file-name run label) and ``subject``."""
    frames = []
    for path in paths:
        table = read_table(path, ["run", "mean_fd", "max_fd"], dtype={"subject": str, "run": str})
        if table.empty:
            raise InputError(path, "QC table has no rows")
        for col in QC_NUMBERS:
            if col in table and not pd.api.types.is_numeric_dtype(table[col]):
                raise InputError(path, f"column {col!r} must hold numbers (or 'n/a'), got {table[col].tolist()}")
        frames.append(table)
    runs = pd.concat(frames, ignore_index=True)
    runs["label"] = [Path(str(r)).name for r in runs["run"]]
    runs["subject"] = subjects(runs["label"])
    repeated = runs["label"][runs["label"].duplicated()].tolist()
    if repeated:
        raise InputError(", ".join(str(p) for p in paths), f"QC tables repeat run(s) {repeated}; each run must have one")
    return runs


def read_run_qc(path: PathLike) -> pd.DataFrame:
    """The run_qc table (one row per run, ``included`` and ``exclusion_reasons``), with ``label``."""
    table = read_table(path, ["run", "included", "exclusion_reasons"], dtype={"run": str, "subject": str, "exclusion_reasons": str})
    table["included"] = as_bool(table["included"], path, "included")
    table["label"] = [Path(r).name for r in table["run"]]
    return table


def read_coverage(paths: list[PathLike]) -> dict[str, pd.DataFrame]:
    """Coverage tables keyed by run label (file name before ``_space-``), all on one region list."""
    tables: dict[str, pd.DataFrame] = {}
    first: pd.DataFrame | None = None
    for path in paths:
        table = read_table(path, ["index", "name", "coverage", "used"]).sort_values("index", kind="stable")
        table = table.reset_index(drop=True)
        table["used"] = as_bool(table["used"], path, "used")
        values = pd.to_numeric(table["coverage"], errors="coerce")
        if not values.between(0.0, 1.0).all():
            raise InputError(path, "column 'coverage' must hold a number within [0, 1] in every row")
        table["coverage"] = values.astype(float)
        label = run_label(path)
        if label in tables:
            raise InputError(path, f"a second coverage table for run {label}")
        if first is None:
            first = table
        elif not (table["index"].tolist() == first["index"].tolist() and table["name"].tolist() == first["name"].tolist()):
            raise InputError(path, f"regions differ from those of {paths[0]}")
        tables[label] = table
    return tables


def read_matrix(path: PathLike, regions: pd.DataFrame) -> np.ndarray:
    """A square region x region TSV as an array, rows and columns in region-label order.

    Matrices whose region names are those of the coverage tables are put in label order
    by name; others must already be in label order (label k is row k-1).
    """
    table = read_table(path, [], index_col=0)
    names = [str(n) for n in table.index]
    if [str(c) for c in table.columns] != names:
        raise InputError(path, f"not a square region matrix: {len(names)} rows, {len(table.columns)} columns "
                               "(the header must repeat the row names)")
    if len(names) != len(regions):
        raise InputError(path, f"{len(names)} regions, the coverage tables have {len(regions)}")
    values = table.to_numpy(dtype=float)
    order = regions["name"].astype(str).tolist()
    if set(names) == set(order) and names != order:
        position = {n: k for k, n in enumerate(names)}
        take = [position[n] for n in order]
        values = values[np.ix_(take, take)]
    return values


def read_diff_meta(path: PathLike) -> dict:
    sidecar = existing_sidecar(path)
    if sidecar is None:
        return {}
    try:
        data = read_json(sidecar)
    except json.JSONDecodeError as exc:
        raise InputError(sidecar, f"not valid JSON ({exc})") from exc
    return {k: data[k] for k in _DIFF_META_KEYS if isinstance(data, dict) and k in data}


def existing_sidecar(path: PathLike | None) -> Path | None:
    return sidecar_path(path) if path is not None and sidecar_path(path).is_file() else None


def read_edges(path: PathLike, regions: pd.DataFrame) -> pd.DataFrame:
    """Planted edges, with the matrix positions (``pos_i``, ``pos_j``) of their atlas labels."""
    edges = read_table(path, ["region_i", "region_j", "delta"])
    for col in ("name_i", "name_j", "corr_nonresponder", "corr_responder"):
        if col not in edges:
            edges[col] = np.nan
    labels = edges[["region_i", "region_j"]]
    if not all(pd.api.types.is_integer_dtype(labels[c]) for c in labels):
        raise InputError(path, "region_i and region_j must be integer atlas labels in every row")
    position = {int(label): k for k, label in enumerate(regions["index"])}
    known = labels.isin(list(position)).all().all()
    if not known or (labels["region_i"] == labels["region_j"]).any():
        raise InputError(path, "region labels must be distinct pairs of the atlas labels "
                               f"({min(position)}..{max(position)}) in every row")
    return edges.assign(pos_i=labels["region_i"].map(position), pos_j=labels["region_j"].map(position))


def read_config(config: Mapping[str, Any] | PathLike | None) -> dict | None:
    if config is None:
        return None
    if isinstance(config, (str, Path)):
        with open(require_file(config), encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    if not isinstance(config, Mapping):
        raise TypeError(f"'config' must be a mapping or a YAML/JSON file. Got: {config.__class__.__name__}")
    # Plain JSON types only (Paths, numpy scalars -> str/float), keeping the key order.
    return json.loads(json.dumps(config, default=str))


def config_get(config: Mapping[str, Any] | None, *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def subjects(labels) -> list[str]:
    """Subject labels from run labels (``sub-01_task-rest`` -> ``01``), kept as text."""
    return [bare(str(label).split("_")[0]) for label in labels]


def run_label(path: PathLike) -> str:
    """The run label of a run's file: its name before ``_space-`` (or before the extension)."""
    name = Path(path).name
    if "_space-" in name:
        return name.split("_space-")[0]
    return name.split("_desc-")[0] if "_desc-" in name else name.removesuffix(".tsv")


def regions_of(cov: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return next(iter(cov.values()))[["index", "name"]].reset_index(drop=True)


def as_bool(values: pd.Series, path: PathLike, column: str) -> pd.Series:
    mapping = {True: True, False: False, "True": True, "False": False, "true": True, "false": False, 1: True, 0: False}
    out = values.map(lambda v: mapping.get(v))
    if out.isna().any():
        raise InputError(path, f"column {column!r} must hold True/False in every row")
    return out.astype(bool)


def flatten(*items: PathLike | Sequence[PathLike] | None) -> list[str]:
    """Every file as given (lists flattened, None left out), without repeats, in order."""
    out: list[str] = []
    for item in items:
        if item is not None:
            for p in ([item] if isinstance(item, (str, Path)) else item):
                if str(p) not in out:
                    out.append(str(p))
    return out


def atlas_summary(path: PathLike | None) -> dict | None:
    """Name, region count and coordinate source of the atlas whose look-up table is ``path``
    (name and source from its sidecar when there is one, else the name from ``atlas-<name>_dseg.tsv``)."""
    if path is None:
        return None
    table = read_table(path, ["index", "name"])
    sidecar = existing_sidecar(path)
    meta = read_json(sidecar) if sidecar is not None else {}
    name = meta.get("Name") or Path(path).name.split("_")[0].removeprefix("atlas-")
    return {"name": str(name), "n_regions": len(table), "coordinates_from": meta.get("CoordinatesFrom")}
