"""Preprocessed BOLD: where it comes from (the ``preproc.mode`` seam) and its checks.

Modes (DESIGN.md): ``derivatives`` ingests fMRIPrep outputs that already exist;
``fmriprep`` (run the container) and ``lite`` (pip-installable minimal preprocessing)
plug in here by producing the same fMRIPrep-shaped files under their own root.
"""

from .derivatives import PreprocFiles, check_run, locate_run

MODES = ("derivatives",)

__all__ = ["MODES", "PreprocFiles", "check_run", "locate_run"]
