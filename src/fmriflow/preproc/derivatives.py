"""Ingest fMRIPrep derivatives that already exist (what XCP-D does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..io import open_nifti, read_tsv
from ..naming import derivative
from ..qc import motion_summary


@dataclass(frozen=True)
class PreprocFiles:
    bold: Path
    mask: Path
    confounds: Path


def locate_run(deriv_root: str | Path, run: str, space: str = "MNI152NLin6Asym", res: str = "2") -> PreprocFiles:
    """The preprocessed BOLD, brain mask and confounds of one run under an fMRIPrep root.

    fMRIPrep >= 21 writes ``_res-2`` for the 2 mm template grid, 20.2 writes no ``res``
    entity: both are accepted; the error names the file that is missing.
    """
    root = Path(deriv_root)
    found = {}
    for kind, desc, suffix in (("bold", "preproc", "bold"), ("mask", "brain", "mask")):
        candidates = [root / derivative(run, space=space, res=r, desc=desc, suffix=suffix, extension=".nii.gz") for r in (res, None)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise InputError(candidates[0], f"preprocessed {kind} not found in fMRIPrep derivatives {root} (also tried {candidates[1].name})")
        found[kind] = path
    confounds = root / derivative(run, desc="confounds", suffix="timeseries", extension=".tsv")
    if not confounds.is_file():
        raise InputError(confounds, f"confounds not found in fMRIPrep derivatives {root}")
    return PreprocFiles(found["bold"], found["mask"], confounds)


def check_run(files: PreprocFiles, raw_tr: float, fd_threshold: float = 0.5) -> dict:
    """Check one run's fMRIPrep outputs against each other and the raw data; return QC numbers."""
    img = open_nifti(files.bold)
    if img.ndim != 4:
        raise InputError(files.bold, f"preprocessed BOLD must be 4D, got shape {img.shape}")
    tr = float(img.header.get_zooms()[3])
    if abs(tr - raw_tr) > 1e-3:
        raise InputError(files.bold, f"TR {tr:g} s differs from the raw BOLD's RepetitionTime {raw_tr:g} s")
    mask = open_nifti(files.mask)
    if mask.shape != img.shape[:3] or not np.allclose(mask.affine, img.affine, atol=1e-4):
        raise InputError(files.mask, f"brain mask grid {mask.shape} differs from the BOLD grid {img.shape[:3]}")
    confounds = read_tsv(files.confounds)
    if len(confounds) != img.shape[3]:
        raise InputError(files.confounds, f"{len(confounds)} rows for {img.shape[3]} volumes in {files.bold.name}")
    qc = {
        "n_volumes": int(img.shape[3]),
        "tr": tr,
        "grid": "x".join(map(str, img.shape[:3])),
        "voxel_size_mm": float(img.header.get_zooms()[0]),
        "brain_voxels": int(np.count_nonzero(np.asanyarray(mask.dataobj))),
    }
    qc.update(motion_summary(confounds, files.confounds, fd_threshold))
    return qc
