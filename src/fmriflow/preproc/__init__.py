"""Preprocessed BOLD: where it comes from (the ``preproc.mode`` seam) and its checks.

Modes (DESIGN.md): ``derivatives`` ingests fMRIPrep outputs that already exist;
``fmriprep`` runs fMRIPrep in its container, one job per subject; ``lite`` is a minimal
preprocessing from pip-installable tools. The two that produce files write the same
fMRIPrep-shaped names under their own root, so every later step reads them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import InputError
from .derivatives import PreprocFiles, check_run, locate_run

MODES = ("derivatives", "fmriprep", "lite")

# Roots (under output_dir) of the modes that write preprocessed data.
FMRIPREP_ROOT = "fmriprep"
LITE_ROOT = "preproc-lite"


def preproc_files(section: Mapping[str, Any], runs: Iterable[str], output_dir: str | Path) -> dict[str, PreprocFiles]:
    """Run key -> the preprocessed BOLD, mask and confounds the later steps read.

    ``derivatives``: found (and checked to exist) under ``derivatives_dir``; ``fmriprep`` and
    ``lite``: the names their rules will write, known before anything ran.
    """
    mode = section["mode"]
    if mode == "derivatives":
        if not section.get("derivatives_dir"):
            raise InputError("preproc.derivatives_dir", "not set, but preproc.mode is 'derivatives': give the folder "
                                                    "of the fMRIPrep outputs, or choose mode fmriprep or lite")
        return {run: locate_run(section["derivatives_dir"], run, section["space"]) for run in runs}
    if mode == "fmriprep":
        from .fmriprep import expected_files

        return {run: expected_files(Path(output_dir) / FMRIPREP_ROOT, run) for run in runs}
    if mode == "lite":
        from .lite import expected_files

        return {run: expected_files(Path(output_dir) / LITE_ROOT, run) for run in runs}
    raise ValueError(f"'mode' must be one of {MODES}; {mode!r} was provided")


__all__ = ["FMRIPREP_ROOT", "LITE_ROOT", "MODES", "PreprocFiles", "check_run", "locate_run", "preproc_files"]
