"""Structural connectomes from diffusion MRI: read, match to subjects, check, transform, write.

Inputs that exist already (derivatives mode):

- MRtrix ``tck2connectome`` text matrices (``.csv``: comma-delimited; other extensions:
  whitespace-delimited; no header). Without ``-symmetric`` tck2connectome stores only the upper
  triangle; such a matrix is mirrored (``read_connectome`` records it).
- QSIRecon / QSIPrep MATLAB connectivity files (``.mat``): one matrix per atlas and measure,
  e.g. ``atlas_<atlas>_<measure>_connectivity``, with the atlas's ``..._region_ids``; the key is
  chosen by ``atlas`` and ``measure`` and the error lists the keys there are.

Checks (``check_connectome``): square, the atlas's size (and, where the file lists region ids,
its order), finite, non-negative counts, symmetric; each failure names the file.

Transforms (``TRANSFORMS``), recorded with the matrix (``ConnectomeInfo``):
``log10_count_over_volume``: log10(count / mean volume of the two regions) on edges with
streamlines, 0 where there are none (so weak edges are negative and absent ones 0, the signed
input BrainSymphony's graph transformer takes); ``log1p``: log(1 + count); ``none``.
The diagonal (streamlines ending in the region they start in) is set to 0 in every transform.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..io import read_tsv, write_tsv
from ..provenance import write_sidecar

TRANSFORMS = ("log10_count_over_volume", "log1p", "none")
# the desc- entity of a transformed connectome's file name (BIDS entity values are alphanumeric)
TRANSFORM_DESC = {"log10_count_over_volume": "log10countovervolume", "log1p": "log1pcount", "none": "count"}
SYMMETRY_RTOL = 1e-6  # relative to the largest |value|: counts written by tools are symmetric exactly


@dataclass
class ConnectomeInfo:
    """How a matrix was read and transformed (goes into its sidecar)."""

    source: str
    format: str  # tck2connectome text | qsirecon mat
    key: str = ""  # the .mat key read
    mirrored_upper_triangle: bool = False  # stored upper-triangular (tck2connectome without -symmetric)
    transform: str = "none"
    transform_details: dict[str, Any] = field(default_factory=dict)


def read_connectome(path: str | Path, atlas: str = "", measure: str = "", *,
                    region_ids: Sequence[int] | None = None) -> tuple[np.ndarray, ConnectomeInfo]:
    """The connectome in ``path`` as float64 (R, R), checked; ``region_ids`` the atlas's label order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such connectome file")
    if path.suffix == ".mat":
        matrix, ids, key = _read_mat(path, atlas, measure)
        info = ConnectomeInfo(str(path), "qsirecon mat", key=key)
    else:
        matrix, ids = _read_text(path), None
        info = ConnectomeInfo(str(path), "tck2connectome text")
    matrix, info.mirrored_upper_triangle = _mirror_upper(matrix)
    check_connectome(matrix, path, n_regions=None if region_ids is None else len(region_ids))
    if ids is not None and region_ids is not None and list(ids) != list(region_ids):
        raise InputError(path, f"region ids {list(ids)[:8]}... are not the atlas's order {list(region_ids)[:8]}...")
    return matrix, info


def _read_text(path: Path) -> np.ndarray:
    delimiter = "," if path.suffix == ".csv" else None
    try:
        matrix = np.loadtxt(path, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(path, f"not a numeric matrix without a header ({exc})") from exc
    return matrix


def _read_mat(path: Path, atlas: str, measure: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    from scipy.io import loadmat

    data = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    pattern = re.compile(rf"(atlas_)?{re.escape(atlas)}_{re.escape(measure)}(_connectivity)?$")
    keys = sorted(k for k in data if pattern.fullmatch(k))
    if len(keys) != 1:
        raise InputError(path, f"{len(keys)} matrices match atlas {atlas!r} and measure {measure!r}; "
                         f"keys there: {sorted(data)}", settings=("atlas", "measure"))
    ids_key = next((k for k in (f"atlas_{atlas}_region_ids", f"{atlas}_region_ids") if k in data), None)
    ids = None if ids_key is None else np.asarray(data[ids_key]).ravel().astype(int)
    return np.asarray(data[keys[0]], dtype=np.float64), ids, keys[0]


def _mirror_upper(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
    """A matrix stored upper-triangular (zeros below the diagonal, something above) made symmetric."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        return matrix, False
    lower, upper = np.tril(matrix, -1), np.triu(matrix, 1)
    if not lower.any() and upper.any():
        return matrix + upper.T, True
    return matrix, False


def check_connectome(matrix: np.ndarray, path: str | Path, n_regions: int | None = None,
                     counts: bool = True) -> None:
    """Square, ``n_regions`` wide, finite, non-negative (``counts``), symmetric; else ``InputError`` naming ``path``."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(path, f"a connectome must be a square matrix; got shape {matrix.shape}")
    if n_regions is not None and matrix.shape[0] != n_regions:
        raise InputError(path, f"the atlas has {n_regions} regions but the connectome is "
                         f"{matrix.shape[0]} x {matrix.shape[1]}", settings=("atlas",))
    bad = ~np.isfinite(matrix)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(path, f"{int(bad.sum())} non-finite value(s), the first at row {i}, column {j}")
    if counts and (matrix < 0).any():
        raise InputError(path, f"streamline counts must be non-negative; the smallest is {matrix.min():g}")
    scale = max(float(np.abs(matrix).max()), 1e-300)
    asym = np.abs(matrix - matrix.T)
    if asym.max() > SYMMETRY_RTOL * scale:
        i, j = np.unravel_index(asym.argmax(), asym.shape)
        raise InputError(path, f"not symmetric: [{i}, {j}] = {matrix[i, j]:g} but [{j}, {i}] = {matrix[j, i]:g}")


def transform_connectome(counts: np.ndarray, transform: str, volumes: np.ndarray | None = None,
                         info: ConnectomeInfo | None = None) -> np.ndarray:
    """``counts`` (R, R) under ``transform`` (``TRANSFORMS``), diagonal 0; ``info`` records how."""
    if transform not in TRANSFORMS:
        raise SettingError("transform", f"'transform' must be one of {TRANSFORMS}; {transform!r} was provided")
    out = np.zeros_like(counts, dtype=np.float64)
    details: dict[str, Any] = {"diagonal": "set to 0"}
    if transform == "log10_count_over_volume":
        if volumes is None or np.shape(volumes) != (counts.shape[0],) or not (np.asarray(volumes) > 0).all():
            raise SettingError("volumes", f"'volumes' must hold {counts.shape[0]} positive region volumes "
                               "for log10_count_over_volume")
        volumes = np.asarray(volumes, dtype=np.float64)
        mean_volume = (volumes[:, None] + volumes[None, :]) / 2
        present = counts > 0
        out[present] = np.log10(counts[present] / mean_volume[present])
        details.update(volume="mean of the two regions' volumes", absent_edges="0")
    elif transform == "log1p":
        out = np.log1p(counts)
    else:
        out = counts.astype(np.float64)
    np.fill_diagonal(out, 0.0)
    if info is not None:
        info.transform, info.transform_details = transform, details
    return out


def match_subjects(paths: Sequence[str | Path], subjects: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """Each subject's one connectome among ``paths`` (by the ``sub-<label>`` entity of the file name),
    and the subjects that have none (they take the unimodal path).

    A subject with several files, or a file of a subject not asked for, is an error naming them.
    """
    found: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        match = re.match(r"sub-([A-Za-z0-9]+)_", path.name)
        if match is None:
            raise InputError(path, "the file name does not start with a sub-<label>_ entity")
        found.setdefault(match.group(1), []).append(path)
    several = {s: [str(p) for p in ps] for s, ps in found.items() if len(ps) > 1}
    if several:
        subject, files = next(iter(sorted(several.items())))
        raise InputError(files[0], f"subject {subject} has {len(files)} connectomes ({files}); keep one per subject")
    unknown = sorted(set(found) - set(subjects))
    if unknown:
        raise InputError(found[unknown[0]][0], f"connectome(s) of subject(s) {unknown} not in the cohort")
    return {s: found[s][0] for s in subjects if s in found}, [s for s in subjects if s not in found]


def find_connectomes(root: str | Path, subjects: Sequence[str], pattern: str = "sub-*",
                     suffixes: Sequence[str] = (".csv", ".txt", ".mat", ".tsv")) -> tuple[dict[str, Path], list[str]]:
    """``match_subjects`` over the files below ``root`` matching ``pattern``, files of other subjects left out."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder of connectomes", settings=("sc.dir",))
    wanted = set(subjects)
    files = [p for p in sorted(root.rglob(pattern)) if p.is_file() and p.suffix in suffixes
             and re.match(r"sub-([A-Za-z0-9]+)_", p.name) and p.name[4:].split("_")[0] in wanted]
    return match_subjects(files, subjects)


def write_connectome(path: str | Path, matrix: np.ndarray, region_names: Sequence[str], info: ConnectomeInfo,
                     inputs: Sequence[str | Path], parameters: Mapping[str, Any] | None = None) -> Path:
    """The matrix as a TSV (header = region names, no index) with its provenance sidecar."""
    if len(region_names) != matrix.shape[0]:
        raise ValueError(f"{len(region_names)} region names for a {matrix.shape[0]}-region matrix")
    write_tsv(path, pd.DataFrame(matrix, columns=list(region_names)))
    metadata = {"RelationshipMeasure": "streamline count" if info.transform == "none" else info.transform,
                "Weighted": True, "Directed": False, "ValidDiagonal": False, "Connectome": asdict(info)}
    return write_sidecar(path, "sc", inputs, parameters=dict(parameters or {}), metadata_fields=metadata)


def prepare_connectome(source: str | Path, out: str | Path, labels: str | Path, *, atlas: str = "",
                       measure: str = "", transform: str = "log10_count_over_volume",
                       volumes: str | Path | None = None, parameters: Mapping[str, Any] | None = None) -> Path:
    """A subject's connectome from a QSIRecon / MRtrix file to the model's input: read, checked against
    the atlas look-up table ``labels`` (its ``name`` column gives size and order), transformed, written
    as a TSV with its sidecar (the transform recorded); the sidecar's path."""
    lut = read_tsv(labels)
    names = lut["name"].astype(str).tolist()
    ids = lut["index"].astype(int).tolist() if "index" in lut.columns else None
    counts, info = read_connectome(source, atlas, measure, region_ids=ids)
    check_connectome(counts, source, n_regions=len(names))
    sizes = None
    if volumes is not None:
        table = read_tsv(volumes)
        if "volume_mm3" not in table.columns or len(table) != len(names):
            raise InputError(volumes, f"needs a volume_mm3 column with one row per atlas region ({len(names)}); "
                             f"got columns {list(table.columns)} and {len(table)} rows", settings=("volumes",))
        sizes = table["volume_mm3"].to_numpy(dtype=float)
    matrix = transform_connectome(counts, transform, sizes, info)
    inputs = [source, labels, *([volumes] if volumes is not None else [])]
    return write_connectome(out, matrix, names, info, inputs, parameters)
