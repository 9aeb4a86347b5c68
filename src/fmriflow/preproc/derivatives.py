"""Ingest fMRIPrep derivatives that already exist (what XCP-D does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..io import open_nifti, read_tsv
from ..naming import check_mni_space, derivative
from ..qc import motion_summary


@dataclass(frozen=True)
class PreprocFiles:
    bold: Path
    mask: Path
    confounds: Path


def locate_run(deriv_root: str | Path, run: str, space: str = "MNI152NLin6Asym", res: str = "2") -> PreprocFiles:
    """The preprocessed BOLD, brain mask and confounds of one run under an fMRIPrep root.

    Accepts fMRIPrep 20.2 and later: ``_res-2`` (fMRIPrep >= 21 names the 2 mm template
    grid so) is preferred, then no ``res`` entity (20.2), then any other resolution of
    ``space`` (resampled later). Sessions, tasks, acquisitions and runs are part of the run
    key, so each run finds its own files. The error names the first missing file and
    lists what the run's folder holds instead.
    """
    check_mni_space(space, deriv_root)
    root = Path(deriv_root)
    found = {}
    for kind, desc, suffix in (("bold", "preproc", "bold"), ("mask", "brain", "mask")):
        candidates = [root / derivative(run, space=space, res=r, desc=desc, suffix=suffix, extension=".nii.gz") for r in (res, None)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:  # listed only when needed: the workflow locates every run when it is read
            others = sorted((root / run).parent.glob(f"{Path(run).name}_space-{space}_res-*_desc-{desc}_{suffix}.nii.gz"))
            path = next((c for c in others if c.is_file()), None)
        if path is None:
            raise InputError(candidates[0], f"preprocessed {kind} not found in fMRIPrep derivatives {root} "
                                            f"(also tried {candidates[1].name} and other res- values){_listing(root, run)}")
        found[kind] = path
    if found["bold"].name.split("_desc-")[0] != found["mask"].name.split("_desc-")[0]:
        raise InputError(found["mask"], f"brain mask and BOLD are on different grids ({found['bold'].name})")
    confounds = root / derivative(run, desc="confounds", suffix="timeseries", extension=".tsv")
    if not confounds.is_file():
        old = root / derivative(run, desc="confounds", suffix="regressors", extension=".tsv")
        hint = f" ({old.name} exists: fMRIPrep before 20.2 is not supported)" if old.is_file() else _listing(root, run)
        raise InputError(confounds, f"confounds not found in fMRIPrep derivatives {root}{hint}")
    return PreprocFiles(found["bold"], found["mask"], confounds)


def _listing(root: Path, run: str) -> str:
    folder = (root / run).parent
    names = sorted(p.name for p in folder.glob(f"{Path(run).name}_*")) if folder.is_dir() else []
    if not names:
        return f"; {folder} holds no file of this run" if folder.is_dir() else f"; {folder} does not exist"
    return "; the run's files there: " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")


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
        raise InputError(files.confounds, f"{len(confounds)} rows for {img.shape[3]} volumes in {Path(files.bold).name}")
    qc = {
        "n_volumes": int(img.shape[3]),
        "tr": tr,
        "grid": "x".join(map(str, img.shape[:3])),
        "voxel_size_mm": float(img.header.get_zooms()[0]),
        "brain_voxels": int(np.count_nonzero(np.asanyarray(mask.dataobj))),
    }
    qc.update(motion_summary(confounds, files.confounds, fd_threshold))
    return qc
