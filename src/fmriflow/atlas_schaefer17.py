"""Schaefer-400 in its 17-network order, derived from pinned files: the pinned 7-network image relabelled.

The 7- and 17-network releases of Schaefer-400 are the same 400 parcels, numbered and named in
two orders (CBIG). No 17-network volumetric file could be pinned (see docs/atlases.md), but the
Tian release ships both orders as CIFTI label files on one set of grayordinates
(``Schaefer2018_400Parcels_{7,17}Networks_order_Tian_Subcortex_S3.dlabel.nii``, Tian S3 as labels
1-50 in both; the names in their label tables are CBIG's current ones). Reading the two label
columns side by side gives each 7-network parcel's 17-network number; the correspondence must be a bijection (every vertex of a 7-network parcel
carries one and the same 17-network label, no two parcels share one, the 50 Tian labels agree),
anything else is an error naming both files. The pinned 7-network volume (Tian 1-50, Schaefer
51-450) is then relabelled voxel for voxel through it: the voxels are CBIG's, only the numbers change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError
from .io import atomic_path

N_SUB, N_CTX = 50, 400
DERIVED_IMAGE = "Schaefer2018_400Parcels_17Networks_order_Tian_Subcortex_S3_MNI152NLin6Asym_2mm.derived.nii.gz"


def _dlabel(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        labels = np.rint(np.asarray(img.dataobj)).astype(np.int64)
        axis, table = img.header.get_axis(1), img.header.get_axis(0).label[0]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a bad input
        raise InputError(path, f"not a readable CIFTI dense label file ({exc})") from exc
    if labels.ndim != 2 or labels.shape[0] != 1:
        raise InputError(path, f"expected one label map (1 x grayordinates), found shape {labels.shape}")
    return labels[0], axis, {int(k): str(v[0]) for k, v in table.items()}


def correspondence(seven: str | Path, seventeen: str | Path) -> np.ndarray:
    """``p`` with ``p[k - 1]`` the 17-network number (1..400) of the 7-network parcel ``k``.

    Both files: Tian S3 (1-50) then Schaefer-400 (51-450) on the same grayordinates.
    """
    a, axis_a, _ = _dlabel(Path(seven))
    b, axis_b, _ = _dlabel(Path(seventeen))
    where = f"{seven} and {seventeen}"
    if axis_a != axis_b:
        raise InputError(seventeen, f"its grayordinates differ from {seven}'s; the two orders cannot be compared")
    sub = (a > 0) & (a <= N_SUB)
    if not np.array_equal(sub, (b > 0) & (b <= N_SUB)) or not np.array_equal(a[sub], b[sub]):
        raise InputError(seventeen, f"the Tian S3 labels 1-{N_SUB} differ between {where}")
    ctx = (a > N_SUB) | (b > N_SUB)
    pairs = np.unique(np.stack([a[ctx], b[ctx]], axis=1), axis=0)
    expected = np.arange(N_SUB + 1, N_SUB + N_CTX + 1)
    problems = []
    for column, order in ((0, "7"), (1, "17")):
        values, counts = np.unique(pairs[:, column], return_counts=True)
        if not np.array_equal(values, expected):
            problems.append(f"the {order}-network labels are {values.size} values, not exactly "
                            f"{N_SUB + 1}..{N_SUB + N_CTX} (e.g. {sorted(set(values) ^ set(expected))[:5]})")
        elif (counts > 1).any():
            problems.append(f"{int((counts > 1).sum())} {order}-network parcels meet more than one parcel of the "
                            f"other order (e.g. label {int(values[counts > 1][0])})")
    if problems:
        raise InputError(seventeen, f"the 7- and 17-network parcels of {where} are not one-to-one: "
                                    + "; ".join(problems))
    return pairs[np.argsort(pairs[:, 0]), 1] - N_SUB


def label_names(seventeen: str | Path) -> list[str]:
    """The 17-network CIFTI's own names of labels 51-450 (CBIG's current 17-network names, in its order)."""
    _, _, table = _dlabel(Path(seventeen))
    absent = [k for k in range(N_SUB + 1, N_SUB + N_CTX + 1) if not table.get(k)]
    if absent:
        raise InputError(seventeen, f"its label table lacks names for labels {absent[:5]} (expected {N_SUB + 1}.."
                                    f"{N_SUB + N_CTX})")
    return [table[k] for k in range(N_SUB + 1, N_SUB + N_CTX + 1)]


def relabel(data: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The 7-network volume (Tian 1-50, Schaefer 51-450) in 17-network numbers; Tian and background kept."""
    labels = np.rint(data).astype(np.int64)
    lut = np.concatenate([np.arange(N_SUB + 1), p + N_SUB])  # 0..50 unchanged, 50 + k -> 50 + p[k - 1]
    if labels.min() < 0 or labels.max() > N_SUB + N_CTX:
        raise ValueError(f"labels outside 0..{N_SUB + N_CTX}: {labels.min()}..{labels.max()}")
    return lut[labels]


def derive_image(files: Mapping[str, Path], out_dir: Path) -> Path:
    """Write the 17-network-order volume beside the cached pinned files (same grid and header); its path.

    ``files``: ``source_image`` (the 7-network Tian-combined volume), ``surface7`` and ``surface17``
    (the two CIFTI label files). The output is a function of these bytes alone (gzip without a time stamp).
    """
    import nibabel as nib

    p = correspondence(files["surface7"], files["surface17"])
    img = nib.load(str(files["source_image"]))
    try:
        data = relabel(np.asarray(img.dataobj), p).astype(np.float32)  # float32 labels, as the source image
    except ValueError as exc:
        raise InputError(files["source_image"], str(exc)) from None
    out = Path(out_dir) / DERIVED_IMAGE
    # whole or absent; nibabel's gzip holds no name or time: same bytes each time, so writers sharing the
    # cache (a workflow job, import-checkpoint) may write it at once
    with atomic_path(out, shared=True) as tmp:
        nib.save(nib.Nifti1Image(data, img.affine), str(tmp))
    return out
