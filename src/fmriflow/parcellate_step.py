"""The parcellation step: region time series and coverage tables, each with its provenance sidecar.

A module of its own, apart from :mod:`fmriflow.steps`, so that ``fmriflow parcellate`` imports
only what parcellating needs (nibabel, pandas) and starts in a fraction of the time.
"""

from __future__ import annotations

from typing import Sequence

from .atlas import labels_of_image, load_labels_table
from .io import open_nifti, write_tsv
from .parcellate import parcellate_many
from .provenance import write_sidecar


def parcellate_step(bold: str, mask: str | None, atlases: Sequence[tuple[str, str | None]],
                    out_timeseries: Sequence[str], out_coverage: Sequence[str | None], *, strategy: str,
                    min_coverage: float) -> None:
    """Time series and coverage for every atlas, from one read of the BOLD (the workflow's step and
    ``fmriflow parcellate``).

    ``atlases``: (label image, look-up TSV) pairs; without a TSV the image's labels name the
    regions. A coverage path of None writes no coverage table.
    """
    section = {"strategy": strategy, "min_coverage": min_coverage}
    tables = [(img, load_labels_table(lut) if lut else labels_of_image(img)) for img, lut in atlases]
    results = parcellate_many(bold, tables, mask, strategy=strategy, min_coverage=min_coverage)
    tr = float(open_nifti(bold).header.get_zooms()[3])
    for (img, lut), result, ts_path, cov_path in zip(atlases, results, out_timeseries, out_coverage, strict=True):
        write_tsv(ts_path, result.timeseries)
        inputs = [p for p in (bold, mask, img, lut) if p]
        dropped = {"RegionsBelowCoverage": result.dropped, "MinCoverage": min_coverage}
        write_sidecar(ts_path, "parcellate", inputs, config=section,
                      metadata_fields={"RepetitionTime": tr, "SamplingFrequency": 1.0 / tr, **dropped})
        if cov_path:
            write_tsv(cov_path, result.coverage)
            write_sidecar(cov_path, "parcellate", inputs, config=section, metadata_fields=dropped)
