"""Any atlas for region time series: its table (index, name, MNI x, y, z) and the check of a run against it.

The table comes from a coordinates table a user gives (``input.timeseries.coordinates``) or from
the centroids of a label image (``input.timeseries.labels_image``, names from
``input.timeseries.labels_table``). Its row order is the region order of every artefact
downstream (time series columns, FC rows, the models' coordinate embedding).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .readers import RegionSeries

TABLE_COLUMNS = ("index", "name", "x", "y", "z")
_HASH = re.compile(r"_hash-[0-9a-zA-Z]+$")  # XCP-D appends its parameters' hash to column names


def coordinates_table(path: str | Path) -> pd.DataFrame:
    """A user's coordinates table (TSV, or CSV by extension): ``name``, ``x``, ``y``, ``z`` (MNI mm), optional ``index``.

    Without ``index`` the regions are numbered 1..N in row order.
    """
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype={"name": str})
    except FileNotFoundError:
        raise InputError(path, "atlas coordinates table not found (input.timeseries.coordinates)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable {'comma' if sep == ',' else 'tab'}-separated table ({exc})") from exc
    missing = [c for c in ("name", "x", "y", "z") if c not in table.columns]
    if missing:
        raise InputError(path, f"an atlas coordinates table needs columns name, x, y, z (MNI mm) and may have index; "
                               f"it lacks {missing} (columns: {list(table.columns)[:10]})")
    if "index" not in table.columns:
        table.insert(0, "index", np.arange(1, len(table) + 1))
    return _checked(table, path)


def centroid_table(image: str | Path, labels: str | Path | None = None) -> pd.DataFrame:
    """Regions of a 3D label image with their centroids (mean MNI mm of their voxels, through the affine).

    ``labels``: a TSV with ``index`` and ``name`` (BIDS dseg.tsv) naming the labels; without it a
    region is named by its label number. Every label of the table must be in the image.
    """
    from ..atlas import label_data, load_labels_table
    from ..io import load_nifti

    img = load_nifti(image)
    data = label_data(img, image)
    values = np.rint(data).astype(np.int64).ravel(order="C")
    voxels = np.indices(data.shape).reshape(3, -1)  # C order, as ravel
    inside = values > 0
    present, counts = np.unique(values[inside], return_counts=True)
    if present.size == 0:
        raise InputError(image, "the label image holds no label above 0")
    position = np.searchsorted(present, values[inside])
    mean_ijk = np.stack([np.bincount(position, weights=voxels[a, inside], minlength=present.size) / counts
                         for a in range(3)])
    xyz = (img.affine @ np.vstack([mean_ijk, np.ones(present.size)]))[:3].T
    table = pd.DataFrame({"index": present, "name": [str(v) for v in present],
                          "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    if labels is not None:
        names = load_labels_table(labels)
        absent = sorted(set(names["index"].astype(int)) - set(present.tolist()))
        if absent:
            raise InputError(labels, f"labels {absent[:10]} are not in the label image {Path(image).name}: they have "
                                     "no voxels, so no centroid")
        table = names[["index", "name"]].astype({"index": int, "name": str}).merge(
            table.drop(columns="name"), on="index", how="left")
    return _checked(table, labels or image)


def _checked(table: pd.DataFrame, path) -> pd.DataFrame:
    table = table.copy()
    table["name"] = table["name"].astype(str)
    for column in ("index", "name"):
        repeated = table[column][table[column].duplicated()].tolist()
        if repeated:
            raise InputError(path, f"column {column} repeats {repeated[:5]}; each region must appear once")
    xyz = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(xyz).all():
        row = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
        raise InputError(path, f"region {table['name'].iloc[row]!r} has no finite x, y, z (row {row + 1})")
    if len(table) < 2:
        raise InputError(path, f"an atlas needs at least 2 regions; got {len(table)}")
    table[["x", "y", "z"]] = xyz
    table["index"] = pd.to_numeric(table["index"], errors="raise").astype(int)
    extra = [c for c in table.columns if c not in TABLE_COLUMNS]
    return table[[*TABLE_COLUMNS, *extra]].reset_index(drop=True)


def check_series(series: RegionSeries, path: str | Path, table: pd.DataFrame, atlas: str,
                 repetition_time: float | None = None) -> tuple[pd.DataFrame, float]:
    """One run's time series checked against the atlas: (time x regions frame named and ordered as
    ``table``, TR in seconds).

    Refused, naming ``path``: not 2-D, fewer than 3 volumes, a region count other than the atlas's,
    labels that match neither the atlas's names nor its index numbers, a non-finite value (a
    region that is n/a in every volume is kept: a region without data, as XCP-D writes those below
    its coverage threshold), no region with data, another atlas named by the file, no TR.
    ``repetition_time`` is used when the file declares none.
    """
    values = series.values
    if values.ndim != 2:
        raise InputError(path, f"region time series must be 2-D (volumes x regions); got shape {values.shape}")
    if series.atlas is not None and series.atlas != atlas:
        raise InputError(series.sidecar or path, f"names atlas {series.atlas!r}; input.timeseries.atlas is {atlas!r}")
    if values.shape[1] != len(table):
        raise InputError(path, f"{values.shape[1]} regions (columns); atlas {atlas} has {len(table)} regions: "
                               "the file must hold one column per atlas region (is the file transposed, "
                               "or of another atlas?)")
    if values.shape[0] < 3:
        raise InputError(path, f"{values.shape[0]} volume(s); at least 3 are needed (connectivity)")
    order = _column_order(series.labels, table, path, atlas)
    values = values[:, order]
    empty = np.isnan(values).all(axis=0)
    bad = ~np.isfinite(values) & ~empty[None, :]
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise InputError(path, f"value {values[row, col]} in region {table['name'].iloc[col]!r} at volume {row + 1}: "
                               "values must be finite (a region may be n/a in every volume, when it has no data)")
    if empty.all():
        raise InputError(path, "every region is n/a: no region has data")
    tr = series.tr if series.tr is not None else repetition_time
    if tr is None:
        raise InputError(path, "no TR: neither a JSON sidecar beside it with RepetitionTime (or SamplingFrequency) "
                               "nor input.timeseries.repetition_time gives one")
    names = table["name"].tolist()
    return pd.DataFrame(values, columns=names), float(tr)


def _column_order(labels: list[str] | None, table: pd.DataFrame, path, atlas: str) -> np.ndarray:
    """Positions of the file's columns in table order: matched by name, else by index number, else
    (a file without labels) in the table's order."""
    n = len(table)
    if labels is None:
        return np.arange(n)
    clean = [_HASH.sub("", str(label)).strip() for label in labels]
    names = table["name"].tolist()
    if sorted(clean) == sorted(names) and len(set(clean)) == n:
        where = {label: k for k, label in enumerate(clean)}
        return np.array([where[name] for name in names])
    numbers = [int(float(c)) if re.fullmatch(r"\d+(\.0+)?", c) else None for c in clean]
    index = table["index"].tolist()
    if None not in numbers and sorted(numbers) == sorted(index) and len(set(numbers)) == n:
        where = {label: k for k, label in enumerate(numbers)}
        return np.array([where[i] for i in index])
    unknown = [c for c in clean if c not in set(names) and not (c.isdigit() and int(c) in set(index))]
    raise InputError(path, f"region labels match neither the names nor the index numbers of atlas {atlas}'s table "
                           f"(first unknown: {unknown[:3]}; the table's names begin {names[:3]}, its index "
                           f"{index[:3]})")
