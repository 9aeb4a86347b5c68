"""The ingestion steps of ``input.mode: timeseries``: the atlas table, each run's artefacts, the manifest.

Each run's region time series is written where parcellation writes it in the voxel modes
(``..._atlas-<A>_stat-mean_timeseries.tsv`` with ``RepetitionTime`` in its sidecar), with a
coverage table (1 for a region with data, 0 for one without) and a QC row, so the run QC,
connectivity, dataset, models and report read them unchanged. Every sidecar records the
source file's sha256, the reader, the TR and the atlas, so ``fmriflow audit`` walks back to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import read_tsv, sha256sum, write_json, write_tsv
from ..naming import subject_of
from ..provenance import build_sidecar, write_sidecar
from .readers import read_series, sidecar_of
from .regions import centroid_table, check_series, coordinates_table

READER = {"xcpd": "fmriflow.timeseries.readers (XCP-D stat-mean timeseries TSV)",
          "cpac": "fmriflow.timeseries.readers (C-PAC / ABIDE-Preprocessed ROI 1D)",
          "table": "fmriflow.timeseries.readers (plain TSV/CSV/NPY with a JSON sidecar)"}


def source_files(path: str | Path) -> list[str]:
    """A run's source file and those beside it that the ingestion reads: its JSON sidecar and
    XCP-D's motion table (``<run>_motion.tsv``), where they exist."""
    path = Path(path)
    label = path.name.split("_space-")[0] if "_space-" in path.name else None
    motion = [path.with_name(f"{label}_motion.tsv")] if label else []
    return [str(path), *(str(p) for p in [sidecar_of(path), *motion] if p.is_file())]


def atlas_step(out_labels: str, *, atlas: str, coordinates: str | None = None, labels_image: str | None = None,
               labels_table: str | None = None) -> None:
    """The atlas's table (index, name, x, y, z in MNI mm) in the derivatives root."""
    if coordinates:
        table, how, inputs = coordinates_table(coordinates), "coordinates table", [coordinates]
    else:
        table = centroid_table(labels_image, labels_table)
        how, inputs = "centroids of the label image (mean voxel position, MNI mm)", [p for p in (labels_image, labels_table) if p]
    write_tsv(out_labels, table)
    write_sidecar(out_labels, "atlas", inputs, metadata_fields={
        "Name": atlas, "NumberOfRegions": len(table), "CoordinatesFrom": how,
        "Description": "region order of every artefact of this atlas (time series columns, FC rows, model inputs)"})


def ingest_step(run: str, source: str, fmt: str, atlas_labels: str, out_timeseries: str, out_coverage: str,
                out_qc: str, *, atlas: str, repetition_time: float | None = None, fd_threshold: float = 0.5) -> None:
    """One run: read and check the source file, write its region time series, coverage and QC row."""
    table = read_tsv(atlas_labels, dtype={"name": str})
    series = read_series(source, fmt)
    frame, tr = check_series(series, source, table, atlas, repetition_time)
    has_data = frame.notna().all(axis=0).to_numpy()
    inputs = [*source_files(source), atlas_labels]
    section = {"format": fmt, "atlas": atlas, "repetition_time": repetition_time}
    provenance = {"Reader": READER[fmt], "SourceFormat": fmt, "SourceFile": source, "SourceSha256": sha256sum(source),
                  "Atlas": atlas, "NumberOfRegions": len(table),
                  "TRFrom": "the source's JSON sidecar" if series.tr is not None else "input.timeseries.repetition_time"}
    write_tsv(out_timeseries, frame)
    without = [n for n, ok in zip(frame.columns, has_data) if not ok]
    write_sidecar(out_timeseries, "timeseries", inputs, config=section,
                  metadata_fields={"RepetitionTime": tr, "SamplingFrequency": 1.0 / tr, **provenance,
                                   "RegionsBelowCoverage": without})
    coverage = pd.DataFrame({"index": table["index"], "name": table["name"], "coverage": has_data.astype(float),
                             "used": has_data})
    write_tsv(out_coverage, coverage)
    write_sidecar(out_coverage, "timeseries", inputs, config=section, metadata_fields={
        **provenance, "Description": "1 for a region with data in the source file, 0 for one that is n/a "
                                     "(voxel coverage is not known from region time series)"})
    qc = {"run": run, "subject": subject_of(run), "n_volumes": len(frame), "tr": tr,
          **_motion(source_files(source), fd_threshold), "fraction_censored": np.nan,
          "remaining_time_s": len(frame) * tr, "degrees_of_freedom": np.nan, "median_tsnr": np.nan}
    write_tsv(out_qc, pd.DataFrame([qc]))
    write_sidecar(out_qc, "timeseries", inputs, config=section, metadata_fields={
        **provenance, "Description": "volumes and time of the source; FD from XCP-D's motion table where one is "
                                     "beside the source, n/a otherwise; censoring, degrees of freedom and tSNR are "
                                     "not known from region time series (n/a fails no QC threshold)"})


def _motion(files: Sequence[str], fd_threshold: float) -> dict[str, Any]:
    from ..qc import motion_summary

    motion = [f for f in files if f.endswith("_motion.tsv")]
    if not motion:
        return {"mean_fd": np.nan, "max_fd": np.nan, "fd_threshold": fd_threshold, "n_high_motion": np.nan}
    return motion_summary(read_tsv(motion[0]), motion[0], fd_threshold)


def manifest_step(runs: Mapping[str, str], fmt: str, atlas: str, out_manifest: str, out_validation: str,
                  *, repetition_time: float | None = None) -> None:
    """Every source file with its sha256, entities, shape and TR; a problem is recorded, not raised.

    As the raw-BIDS manifest: the dataset-wide step goes on, and the run's own ingestion job
    fails on the problem (fmriflow.timeseries.regions.check_series).
    """
    rows, problems = [], []
    for run, source in runs.items():
        row: dict[str, Any] = {"path": source, "sha256": sha256sum(source), "run": run, "subject": subject_of(run),
                               "suffix": "timeseries", "format": fmt, "shape": None, "tr": None, "problem": None}
        try:
            series = read_series(source, fmt)
            row["shape"] = "x".join(map(str, series.values.shape))
            row["tr"] = series.tr if series.tr is not None else repetition_time
        except InputError as exc:
            row["problem"] = exc.problem
            problems.append(f"{source}: {exc.problem}")
        rows.append(row)
    inputs = list(runs.values())
    parameters = {"format": fmt, "atlas": atlas}
    report = {"validator": READER[fmt], "n_errors": len(problems), "n_warnings": 0, "errors": problems,
              "warnings": [], "summary": {"files": len(rows), "format": fmt, "atlas": atlas}}
    write_json(out_validation, {**report, "Provenance": build_sidecar("timeseries", inputs, parameters)["Provenance"]})
    write_tsv(out_manifest, pd.DataFrame(rows))
    write_sidecar(out_manifest, "timeseries", inputs, parameters=parameters)
