"""One function per workflow step: read inputs, call the library, write artefacts + sidecars.

The Snakemake scripts and the CLI both call these, so a step behaves the same whether
the DAG or a user runs it. Each function writes its outputs atomically and only after
all checks passed, and gives every artefact its provenance sidecar.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import atlas as atlas_mod
from .connectivity import PEARSON_METADATA, fisher_mean, fisher_z, pearson
from .errors import InputError
from .io import atomic_path, read_tsv, write_json, write_tsv
from .preproc import PreprocFiles, check_run
from .provenance import build_sidecar, write_sidecar

# nilearn and pybids take seconds to import: the steps that need them import them
# inside, so each Snakemake job pays only for its own step.

Config = Mapping[str, Any]


def atlas_step(out_img: str, out_labels: str, cache_dir: str, local_dir: str | None = None) -> None:
    """Copy the verified A424 atlas into the derivatives root, with its look-up table."""
    files = atlas_mod.fetch_a424(cache_dir, local_dir)
    with atomic_path(out_img) as tmp:
        shutil.copyfile(files["labels_img"], tmp)
    write_tsv(out_labels, atlas_mod.a424_labels_table(files["coordinates"]))
    source = {f.name: {"URL": f.url, "sha256": f.sha256} for f in atlas_mod.A424_FILES.values()}
    for out in (out_img, out_labels):
        write_sidecar(out, "atlas", [files["labels_img"], files["coordinates"]],
                      metadata_fields={"Name": "A424", "SpatialReference": "MNI152NLin6Asym res-2", "Source": source})


def bids_step(bids_dir: str, out_manifest: str, out_validation: str, *, validate: bool = True, fail_on_errors: bool = True) -> None:
    """Validate the raw dataset and write the manifest of every file (sha256, TR, shape)."""
    from .ingest import build_manifest, run_validator

    report = run_validator(bids_dir) if validate else {"validator": None, "n_errors": 0, "n_warnings": 0, "errors": [], "warnings": []}
    if fail_on_errors and report["n_errors"]:
        listing = "\n  ".join(report["errors"][:20])
        raise InputError(bids_dir, f"the BIDS validator reports {report['n_errors']} error(s):\n  {listing}\n"
                         "(set bids.fail_on_errors: false to go on regardless)")
    manifest = build_manifest(bids_dir)
    inputs = [Path(bids_dir) / "dataset_description.json"]
    parameters = {"validate": validate, "fail_on_errors": fail_on_errors}
    write_json(out_validation, {**report, "Provenance": build_sidecar("bids", inputs, parameters)["Provenance"]})
    write_tsv(out_manifest, manifest)
    write_sidecar(out_manifest, "bids", inputs, parameters=parameters)


def preproc_derivatives_step(run: str, files: PreprocFiles, raw_bold: str, manifest: str, bids_dir: str,
                             out_qc: str, config: Config) -> None:
    """Check one run's existing fMRIPrep outputs and write its QC row."""
    table = read_tsv(manifest, dtype={"path": str})
    rel = Path(raw_bold).resolve().relative_to(Path(bids_dir).resolve()).as_posix()
    row = table.loc[table["path"] == rel]
    if row.empty:
        raise InputError(raw_bold, f"not listed in the manifest {manifest}")
    qc = check_run(files, float(row["tr"].iloc[0]), config["qc"]["fd_threshold"])
    write_tsv(out_qc, pd.DataFrame([{"run": run, "subject": run.split("/")[0].removeprefix("sub-"), **qc}]))
    write_sidecar(out_qc, "preproc", [raw_bold, files.bold, files.mask, files.confounds],
                  parameters={"mode": "derivatives"}, config=config["preproc"])


def resample_step(bold: str, mask: str, atlas_img: str, qc: str, out_bold: str, out_mask: str, config: Config) -> None:
    from .resample import to_atlas_grid

    info = to_atlas_grid(bold, mask, atlas_img, out_bold, out_mask)
    for src, out in ((bold, out_bold), (mask, out_mask)):
        write_sidecar(out, "resample", [src, atlas_img, qc], parameters=info,
                      metadata_fields={"SpatialReference": "MNI152NLin6Asym res-2 (A424 grid)"})


def denoise_step(bold: str, mask: str, fmriprep_bold: str, confounds: str, out: str, config: Config) -> None:
    from .denoise import denoise_run

    section = config["denoise"]
    info = denoise_run(
        bold, mask, fmriprep_bold, out, strategy=section["strategy"], strategy_options=section["strategy_options"],
        detrend=section["detrend"], standardize=section["standardize"], low_pass=section["low_pass"],
        high_pass=section["high_pass"],
    )
    write_sidecar(out, "denoise", [bold, mask, confounds], parameters=info, config=section,
                  metadata_fields={"RepetitionTime": info["RepetitionTime"], "Denoised": True})


def parcellate_step(bold: str, mask: str, atlas_img: str, atlas_labels: str, out_timeseries: str,
                    out_coverage: str, config: Config) -> None:
    import nibabel as nib

    from .parcellate import parcellate

    section = config["parcellate"]
    result = parcellate(bold, atlas_img, atlas_mod.load_labels_table(atlas_labels), mask,
                        strategy=section["strategy"], min_coverage=section["min_coverage"])
    tr = float(nib.load(bold).header.get_zooms()[3])
    write_tsv(out_timeseries, result.timeseries)
    write_tsv(out_coverage, result.coverage)
    inputs = [bold, mask, atlas_img, atlas_labels]
    dropped = {"RegionsBelowCoverage": result.dropped, "MinCoverage": section["min_coverage"]}
    write_sidecar(out_timeseries, "parcellate", inputs, config=section,
                  metadata_fields={"RepetitionTime": tr, "SamplingFrequency": 1.0 / tr, **dropped})
    write_sidecar(out_coverage, "parcellate", inputs, config=section, metadata_fields=dropped)


def connectivity_step(timeseries: str, out: str, config: Config) -> None:
    fc = pearson(read_tsv(timeseries))
    write_tsv(out, fc, index=True)
    write_sidecar(out, "connectivity", [timeseries], config=config["connectivity"], metadata_fields=PEARSON_METADATA)


def group_connectivity_step(matrices: Sequence[str], participants: str, group_column: str | None,
                            out_mean: str, out_diff: str, config: Config) -> None:
    """Fisher-z mean FC over all runs, and the difference between the two levels of ``group_column``."""
    fcs = [read_tsv(p, index_col=0) for p in matrices]
    names = list(fcs[0].columns)
    mean = pd.DataFrame(fisher_mean([f.to_numpy() for f in fcs]), index=pd.Index(names, name="Node"), columns=names)
    write_tsv(out_mean, mean, index=True)
    write_sidecar(out_mean, "connectivity", matrices, metadata_fields={**PEARSON_METADATA, "Aggregation": "Fisher-z mean over runs"})

    table = read_tsv(participants, dtype=str)
    meta: dict[str, Any] = {**PEARSON_METADATA, "GroupColumn": group_column}
    diff = np.full(mean.shape, np.nan)
    if group_column and group_column in table:
        subjects = [Path(p).name.split("_")[0] for p in matrices]
        group_of = dict(zip(table["participant_id"], table[group_column]))
        levels = sorted({group_of.get(s) for s in subjects} - {None, "n/a", ""})
        if len(levels) == 2:
            low, high = ([f.to_numpy() for f, s in zip(fcs, subjects) if group_of.get(s) == lvl] for lvl in levels)
            diff = fisher_z(fisher_mean(high)) - fisher_z(fisher_mean(low))
            np.fill_diagonal(diff, np.nan)
            meta.update({"Levels": levels, "Contrast": f"{levels[1]} minus {levels[0]} (Fisher z)",
                         "N": {levels[0]: len(low), levels[1]: len(high)}})
        else:
            meta["Note"] = f"column {group_column!r} has {len(levels)} levels among these runs; a difference needs 2"
    else:
        meta["Note"] = f"no column {group_column!r} in {participants}"
    write_tsv(out_diff, pd.DataFrame(diff, index=pd.Index(names, name="Node"), columns=names), index=True)
    write_sidecar(out_diff, "connectivity", [*matrices, participants], metadata_fields=meta)
