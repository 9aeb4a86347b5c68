"""One function per workflow step: read inputs, call the library, write artefacts + sidecars.

The Snakemake scripts and the CLI both call these, so a step behaves the same whether
the DAG or a user runs it. Each function writes its outputs atomically and only after
all checks passed, and gives every artefact its provenance sidecar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from . import atlas as atlas_mod
from .checks import check_bold_data, raw_bold_problem
from .datasets.participants import read_participants
from .connectivity import PEARSON_METADATA, fisher_mean, pearson
from .connectivity import fisher_z as fisher_z_transform  # stack_step's flag is called fisher_z
from .errors import InputError, SettingError
from .io import atomic_path, read_tsv, save_nifti, write_json, write_tsv
from .naming import subject_of
from .preproc import PreprocFiles, check_run
from .provenance import build_sidecar, write_sidecar
# in a module of its own, so that `fmriflow parcellate` starts without this module's imports
from .parcellate_step import parcellate_step  # noqa: F401

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


def extra_atlas_step(name: str, image: str, labels: str, reference: str, out_img: str, out_labels: str) -> None:
    """A user's label atlas, checked and put on the template grid, in the derivatives root."""
    img, table, info = atlas_mod.label_atlas_on_grid(image, labels, reference)
    save_nifti(img, out_img)
    write_tsv(out_labels, table)
    for out in (out_img, out_labels):
        write_sidecar(out, "atlas", [image, labels, reference], parameters=info,
                      metadata_fields={"Name": name, "SpatialReference": "MNI152NLin6Asym res-2 (A424 grid)"})


def pinned_atlas_step(name: str, reference: str, out_img: str, out_labels: str, cache_dir: str,
                      local_dir: str | None = None) -> None:
    """A pinned third-party atlas (atlas.pinned), fetched and verified like A424, on the A424 grid, with its table."""
    from .atlas_pinned import pinned_atlas_files, pinned_atlas_table

    spec, files = pinned_atlas_files(name, cache_dir, local_dir)  # one folder for all: shared files stored once
    table = pinned_atlas_table(spec, files)
    img, info = atlas_mod.label_image_on_grid(files["image"], reference, table, files["image"])
    save_nifti(img, out_img)
    write_tsv(out_labels, table)
    source = {f.name: {"URL": f.url, "sha256": f.sha256} for f in spec.files.values()}
    for out in (out_img, out_labels):
        write_sidecar(out, "atlas", [*files.values(), reference], parameters=info,
                      metadata_fields={"Name": name, "Description": spec.description,
                                       "SpatialReference": "MNI152NLin6Asym res-2 (A424 grid)", "Source": source})


def bids_step(bids_dir: str, out_manifest: str, out_validation: str, *, validate: bool = True, fail_on_errors: bool = True) -> None:
    """Validate the raw dataset and write the manifest of every file (sha256, TR, shape)."""
    from .ingest import build_manifest, run_validator

    report = run_validator(bids_dir) if validate else {"validator": None, "n_errors": 0, "n_warnings": 0, "errors": [], "warnings": []}
    if fail_on_errors and report["n_errors"]:
        listing = "\n  ".join(report["errors"][:20])
        raise InputError(bids_dir, f"the BIDS validator reports {report['n_errors']} error(s):\n  {listing}\n"
                         "(set bids.fail_on_errors: false to go on regardless)")
    manifest = build_manifest(bids_dir)
    # every raw file is an input of the manifest, so an audit from any artefact that leads here
    # checks each raw byte (sidecars included) against the checksum the manifest recorded
    raw = {(Path(bids_dir) / path).as_posix(): sha for path, sha in zip(manifest["path"], manifest["sha256"])}
    inputs = [Path(bids_dir) / "dataset_description.json"]
    parameters = {"validate": validate, "fail_on_errors": fail_on_errors}
    write_json(out_validation, {**report, "Provenance": build_sidecar("bids", inputs, parameters)["Provenance"]})
    write_tsv(out_manifest, manifest)
    write_sidecar(out_manifest, "bids", list(raw), parameters=parameters, known=raw)


def preproc_derivatives_step(run: str, files: PreprocFiles, raw_bold: str, sidecars: Sequence[str], out_qc: str, *,
                             preproc: Config, fd_threshold: float) -> None:
    """Check one run's fMRIPrep outputs against its raw BOLD and write its QC row.

    ``sidecars``: the raw BOLD's JSON sidecars by the BIDS inheritance principle, least specific
    first (``fmriflow.ingest.Sidecars``); their RepetitionTime is checked against the header. They
    are recorded as inputs, so the run reruns when one changes and an audit sees any change.
    ``preproc`` is what shaped the preprocessed files (recorded in the sidecar); volumes with FD
    above ``fd_threshold`` count as high-motion in the QC row.
    """
    from .ingest import merged_metadata

    tr, problem = raw_bold_problem(raw_bold, merged_metadata(raw_bold, sidecars))
    if problem:
        raise InputError(raw_bold, problem)
    qc = check_run(files, tr, fd_threshold)
    for image in (raw_bold, files.bold):  # the data, read through once: headers are checked above
        check_bold_data(image)
    write_tsv(out_qc, pd.DataFrame([{"run": run, "subject": subject_of(run), **qc}]))
    write_sidecar(out_qc, "preproc", [raw_bold, *sidecars, files.bold, files.mask, files.confounds],
                  parameters={"mode": preproc["mode"]}, config=preproc)


def preproc_lite_step(raw_bold: str, atlas_img: str, out_bold: str, out_mask: str, out_confounds: str,
                      root: str, *, preproc: Config) -> None:
    """``preproc.mode: lite`` for one run: fMRIPrep-shaped BOLD, mask, confounds and boldref, each with provenance.

    ``preproc`` holds ``mode`` and the ``lite`` settings (transform, seed, threads).
    """
    from .preproc.lite import DESCRIPTION, boldref_path, preprocess_run
    from .provenance import write_dataset_description

    section = preproc["lite"]
    files = PreprocFiles(Path(out_bold), Path(out_mask), Path(out_confounds))
    info = preprocess_run(raw_bold, atlas_img, files, transform=section["transform"], seed=section["seed"],
                          threads=section["threads"])
    meta = info.pop("ConfoundsMetadata")
    common = {"Preprocessing": "fmriflow lite", "Description": DESCRIPTION}
    inputs = [raw_bold, atlas_img]
    write_sidecar(out_bold, "preproc", inputs, parameters=info, config=section,
                  metadata_fields={**common, "RepetitionTime": info["RepetitionTime"], "SkullStripped": False,
                                   "SpatialReference": "MNI152NLin2009aSym (nilearn's template) on the A424 grid"})
    for path in (out_mask, boldref_path(files)):
        write_sidecar(path, "preproc", inputs, parameters=info, config=section, metadata_fields=common)
    # the confounds JSON keeps fMRIPrep's per-column metadata (aCompCor masks) beside the provenance
    write_sidecar(out_confounds, "preproc", inputs, parameters=info, config=section, metadata_fields={**meta, **common})
    description = Path(root) / "dataset_description.json"
    if not description.exists():  # every run's job writes the same file; the first one is enough
        write_dataset_description(root, preproc, name="fmriflow lite preprocessing")


def resample_step(bold: str, mask: str, atlas_img: str, qc: str, out_bold: str, out_mask: str) -> None:
    from .resample import to_atlas_grid

    info = to_atlas_grid(bold, mask, atlas_img, out_bold, out_mask)
    for src, out in ((bold, out_bold), (mask, out_mask)):
        write_sidecar(out, "resample", [src, atlas_img, qc], parameters=info,
                      metadata_fields={"SpatialReference": "MNI152NLin6Asym res-2 (A424 grid)"})


def denoise_step(run: str, bold: str, mask: str, confounds: str, out: str, out_qc: str, *,
                 min_degrees_of_freedom: int | None = None, **settings: Any) -> None:
    """Denoised BOLD and the run's QC row (motion, censoring, tSNR); ``settings``: ``DenoiseSettings``' fields.

    ``min_degrees_of_freedom`` (``qc.min_degrees_of_freedom``; None: no minimum): a strategy that
    leaves fewer is refused before anything is written, the error naming both config keys.
    """
    from .denoise import STRATEGIES, DenoiseSettings, denoise_run

    checked = DenoiseSettings(**settings)  # an unknown or missing setting is a TypeError naming it
    section = dataclasses.asdict(checked)
    keys = {"strategy": ("denoise.strategy", checked.strategy,
                         f"one of {', '.join(STRATEGIES)}; fewer regressors leave more degrees of freedom"),
            "min_degrees_of_freedom": ("qc.min_degrees_of_freedom", min_degrees_of_freedom,
                                       "an integer, or null for no minimum (here and in the run QC)")}
    with _naming_config_keys(keys):
        info = denoise_run(bold, mask, confounds, out, checked, min_degrees_of_freedom=min_degrees_of_freedom)
    qc = info.pop("qc")
    inputs = [bold, mask, confounds] + [p for p in [Path(confounds).with_suffix(".json")] if p.is_file()]
    write_sidecar(out, "denoise", inputs, parameters=info, config=section,
                  metadata_fields={"RepetitionTime": info["RepetitionTime"], "Denoised": True})
    write_tsv(out_qc, pd.DataFrame([{"run": run, "subject": subject_of(run), **qc}]))
    write_sidecar(out_qc, "denoise", inputs, config=section)


def run_qc_step(runs: Sequence[str], qc_tables: Sequence[str], coverage_tables: Sequence[str], out: str,
                continue_on_failure: bool = False, **thresholds: Any) -> None:
    """One row per run: motion, censoring, DVARS, tSNR, region coverage; whether QC excludes it and why.

    ``thresholds``: the ``qc`` settings (``qc.EXCLUSION_CRITERIA`` keys; None switches one off).
    ``continue_on_failure``: a run whose per-run step left failure records (``fmriflow.failure``)
    gets a row naming the step and its error, excluded; without it such a run is an error.
    """
    from .qc import EXCLUSION_CRITERIA, exclusions, region_coverage

    rows, failed = [], {}
    for run, qc_path, cov_path in zip(runs, qc_tables, coverage_tables):
        if (record := _failure_of(run, [qc_path, cov_path], continue_on_failure)) is not None:
            failed[run] = f"failed at {record['failed_step']}: {record['error']}"
            rows.append({"run": run, "subject": subject_of(run)})
            continue
        row = read_tsv(qc_path, dtype={"subject": str, "run": str}).iloc[0].to_dict()  # "001" stays "001"
        if row.get("run") != run:
            raise InputError(qc_path, f"QC row is for run {row.get('run')!r}, expected {run!r}")
        row.update(region_coverage(read_tsv(cov_path)))
        rows.append(row)
    section = thresholds
    table = exclusions(pd.DataFrame(rows), section)
    table["error"] = [failed.get(run, "n/a") for run in table["run"]]
    is_failed = table["run"].isin(list(failed))
    table.loc[is_failed, "included"] = False
    table.loc[is_failed, "exclusion_reasons"] = table.loc[is_failed, "error"]  # the report lists the reasons
    write_tsv(out, table)
    thresholds = {key: section.get(key) for key in EXCLUSION_CRITERIA}
    write_sidecar(out, "qc", [*qc_tables, *coverage_tables], config={**section, "continue_on_failure": continue_on_failure},
                  metadata_fields={"Thresholds": thresholds, "ExcludedRuns": table.loc[~table["included"], "run"].tolist(),
                                   "FailedRuns": failed,
                                   "Description": "runs excluded here do not reach the connectivity stacks, "
                                                  "the group FC or the model-ready dataset"})


def _failure_of(run: str, paths: Sequence[str], continue_on_failure: bool) -> dict | None:
    """The failure record a run's step left among ``paths`` (None: none); an error without the option."""
    from .failure import OPTION, first

    found = first(paths)
    if found is None:
        return None
    if not continue_on_failure:
        raise InputError(found[0], f"is the failure record of run {run}'s {found[1]['failed_step']} step "
                                   f"({found[1]['error']}), left while {OPTION} was true")
    return found[1]


def connectivity_step(timeseries: str, out_tsv: Sequence[str], out_npy: Sequence[str | None], *,
                      kinds: Sequence[str], sliding_window: Config | None = None, out_dynamic: str | None = None) -> None:
    """Per-run matrices of each per-run kind in ``kinds`` (tangent is a group-level kind: skipped
    here), as TSV (with region names) and NPY (None: no NPY); with ``out_dynamic``, sliding-window
    FC (``sliding_window``: window and step in volumes)."""
    from .connectivity import GROUP_KINDS, METADATA, run_matrix
    from .connectivity import sliding_window as dynamic_fc

    ts = read_tsv(timeseries)
    section = {"kinds": list(kinds), "sliding_window": sliding_window}
    run_kinds = [k for k in kinds if k not in GROUP_KINDS]
    for kind, tsv, npy in zip(run_kinds, out_tsv, out_npy, strict=True):
        matrix = run_matrix(ts, kind)
        write_tsv(tsv, matrix, index=True)
        if npy:
            with atomic_path(npy) as tmp:
                np.save(tmp, matrix.to_numpy())
        write_sidecar(tsv, "connectivity", [timeseries], also=[npy] if npy else [], config=section,
                      metadata_fields=METADATA[kind])
    if out_dynamic:
        window = sliding_window
        dynamic = dynamic_fc(ts, window["window"], window["step"])
        with atomic_path(out_dynamic) as tmp:
            np.save(tmp, dynamic)
        write_sidecar(out_dynamic, "connectivity", [timeseries], config=section,
                      metadata_fields={**METADATA["pearson"], "WindowVolumes": window["window"],
                                       "StepVolumes": window["step"], "Shape": list(dynamic.shape)})


def tangent_step(timeseries: str, reference: Sequence[str], out_tsv: str) -> None:
    """Tangent-space connectivity of one run relative to a reference group of runs (fitted on the group only)."""
    from .connectivity import METADATA, tangent

    ts = read_tsv(timeseries)
    stack, _ = tangent([ts, *(read_tsv(p) for p in reference)], fit_on=range(1, len(reference) + 1))
    matrix = pd.DataFrame(stack[0], index=pd.Index(ts.columns, name="Node"), columns=ts.columns)
    write_tsv(out_tsv, matrix, index=True)
    write_sidecar(out_tsv, "connectivity", [timeseries, *reference], parameters={"kind": "tangent"},
                  metadata_fields=METADATA["tangent"])


def group_connectivity_step(matrices: Sequence[str], participants: str, group_column: str | None,
                            out_mean: str, out_diff: str) -> None:
    """Fisher-z mean Pearson FC over all runs, and the difference between the two levels of ``group_column``."""
    fcs = [read_tsv(p, index_col=0) for p in matrices]
    names = list(fcs[0].columns)
    mean = pd.DataFrame(fisher_mean([f.to_numpy() for f in fcs]), index=pd.Index(names, name="Node"), columns=names)
    write_tsv(out_mean, mean, index=True)
    write_sidecar(out_mean, "connectivity", matrices, metadata_fields={**PEARSON_METADATA, "Aggregation": "Fisher-z mean over runs"})

    table = read_participants(participants)
    meta: dict[str, Any] = {**PEARSON_METADATA, "GroupColumn": group_column}
    diff = np.full(mean.shape, np.nan)
    if not group_column:
        meta["Note"] = "report.group_column is null"
    elif group_column in table:
        subjects = [_subject(p) for p in matrices]
        group_of = dict(zip(table["participant_id"], table[group_column]))
        levels = sorted({group_of.get(s) for s in subjects} - {None, "n/a", ""})
        if len(levels) == 2:
            low, high = ([f.to_numpy() for f, s in zip(fcs, subjects) if group_of.get(s) == lvl] for lvl in levels)
            diff = fisher_z_transform(fisher_mean(high)) - fisher_z_transform(fisher_mean(low))
            np.fill_diagonal(diff, np.nan)
            meta.update({"Levels": levels, "Contrast": f"{levels[1]} minus {levels[0]} (Fisher z)",
                         "N": {levels[0]: len(low), levels[1]: len(high)}})
        else:
            meta["Note"] = (f"report.group_column {group_column!r} has {len(levels)} levels among these runs; "
                            "a difference needs 2")
    else:
        meta["Note"] = f"report.group_column {group_column!r} is not a column of {participants}"
    write_tsv(out_diff, pd.DataFrame(diff, index=pd.Index(names, name="Node"), columns=names), index=True)
    write_sidecar(out_diff, "connectivity", [*matrices, participants], metadata_fields=meta)


def stack_step(kind: str, runs: Sequence[str], inputs: Sequence[str], participants: str,
               out_stack: str, out_runs: str, *, fisher_z: bool, out_reference: str | None = None) -> None:
    """Runs x regions x regions stack of one kind for modelling, with a table of its runs.

    ``inputs`` are per-run NPY matrices (pearson, partial) or, for tangent, per-run time
    series: the tangent reference is fitted on all runs here (unsupervised); model code
    refits it on training subjects only (fmriflow.connectivity.tangent's ``fit_on``).
    """
    from .connectivity import METADATA, tangent

    section = {"fisher_z": fisher_z}
    meta: dict[str, Any] = {**METADATA[kind], "Runs": out_runs}
    if kind == "tangent":
        stack, reference = tangent([read_tsv(p) for p in inputs])
        meta["Reference"] = "geometric mean of all runs' covariances"
    else:
        stack = np.stack([np.load(p) for p in inputs])
        if fisher_z:
            stack = fisher_z_transform(stack)
            for matrix in stack:
                np.fill_diagonal(matrix, np.nan)
        meta["FisherZ"] = bool(fisher_z)
    meta["Shape"] = list(stack.shape)
    table = read_participants(participants)
    listing = pd.DataFrame({"run": list(runs), "participant_id": [f"sub-{subject_of(r)}" for r in runs]})
    listing = listing.merge(table, on="participant_id", how="left")
    write_tsv(out_runs, listing)
    with atomic_path(out_stack) as tmp:
        np.save(tmp, stack)
    write_sidecar(out_stack, "connectivity", [*inputs, participants], config=section, metadata_fields=meta)
    write_sidecar(out_runs, "connectivity", [participants], metadata_fields={"Description": f"row order of {Path(out_stack).name}"})
    if out_reference:
        with atomic_path(out_reference) as tmp:
            np.save(tmp, reference)
        write_sidecar(out_reference, "connectivity", inputs, config=section,
                      metadata_fields={"Description": "tangent reference covariance (valid regions only)"})


def _subject(path: str) -> str:
    return Path(path).name.split("_")[0]


# What each dataset.* key allows: an error that a key's value causes names the key with this
DATASET_KEYS = {
    "window": "an integer of at least 20, at most a training run's time points, counted at dataset.target_tr when set",
    "stride": "an integer of at least 1 time point",
    "target_tr": "a number of seconds above 0, or null to keep each run's TR",
    "fractions": "3 numbers of at least 0 for train, val and test, train above 0, summing to 1",
    "stratify": "a column of participants.tsv with a label for every subject, or null for no stratification",
}


def dataset_step(runs: Sequence[str], timeseries: Sequence[str], participants: str, out_card: str, *,
                 window: int, stride: int, target_tr: float | None, fractions: Sequence[float],
                 stratify: str | None, seed: int, scaling: pd.DataFrame | None = None,
                 scaling_source: str | None = None) -> None:
    """Model-ready windows of the time series: subject-level splits (stratified by the participants
    column ``stratify``), scaling fitted on training subjects (or ``scaling`` given: ``build_dataset``).

    An error caused by one of the settings names its ``dataset.*`` config key, value and allowed values.
    """
    from .datasets.participants import subject_labels
    from .datasets.regions import build_dataset
    from .datasets.splits import make_splits

    values = {"window": window, "stride": stride, "target_tr": target_tr, "fractions": fractions, "stratify": stratify}
    specs = [{"run": run, "subject": subject_of(run), "timeseries": path,
              "tr": float(_read_sidecar(path)["RepetitionTime"])} for run, path in zip(runs, timeseries)]
    read_participants(participants)  # readable, each subject once, before any label is taken from it
    keys = {name: (f"dataset.{name}", values[name], allowed) for name, allowed in DATASET_KEYS.items()}
    with _naming_config_keys({"column": keys["stratify"]}):  # subject_labels' column is dataset.stratify
        labels = subject_labels(participants, stratify) if stratify else None
    subjects = sorted({s["subject"] for s in specs})
    if labels is not None:
        labels = labels.loc[[s for s in subjects if s in labels.index]]
    with _naming_config_keys(keys):
        splits = make_splits(subjects, fractions=fractions, seed=seed, stratify=labels)
        # the card records the inputs with their sha256 (its Provenance field)
        card = build_dataset(specs, splits, Path(out_card).parent, window=window, stride=stride,
                             target_tr=target_tr, seed=seed, scaling=scaling, scaling_source=scaling_source)
    for run in card["skipped_runs"]:  # too short for a window: kept in the per-run results, left out here
        logging.getLogger("fmriflow").warning("%s is left out of the dataset: %s", run["run"], run["reason"])


@contextlib.contextmanager
def _naming_config_keys(keys: Mapping[str, tuple[str, Any, str]]) -> Iterator[None]:
    """Re-raise an error caused by library settings (its ``settings``) naming the config keys they came from.

    ``keys``: library parameter -> (config key, the value the step was given, what the key allows).
    """
    try:
        yield
    except (InputError, SettingError) as exc:
        named = [keys[s] for s in dict.fromkeys(exc.settings) if s in keys]
        if not named:
            raise
        note = "; ".join(f"{key} is {json.dumps(value, default=str)}, allowed: {allowed}" for key, value, allowed in named)
        raise exc.with_note(note) from exc


def voxel_dataset_step(runs: Sequence[str], bolds: Sequence[str], masks: Sequence[str], splits: str, geometry: str,
                       out_card: str, *, dtype: str) -> None:
    """4-D volumes z-scored in the brain mask on a model's grid ("96x96x96"), with the region dataset's splits."""
    from .datasets.voxels import build_voxel_dataset
    from .models.grids import parse_grid_label

    shape = parse_grid_label(geometry)
    specs = [{"run": run, "subject": subject_of(run), "bold": bold, "mask": mask}
             for run, bold, mask in zip(runs, bolds, masks)]
    # the card records the inputs with their sha256 (its Provenance field)
    build_voxel_dataset(specs, splits, Path(out_card).parent, shape=shape, dtype=dtype)


def _read_sidecar(path: str) -> dict:
    from .io import read_json
    from .provenance import sidecar_path

    return read_json(sidecar_path(path))
