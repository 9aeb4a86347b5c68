"""A released model's recipe step: this project's data prepared as the model's card says.

``prepare_regions_step`` reads the region time series of the project atlas that is the card's
(``recipe_plan.project_atlas``), puts the regions in the card's order, resamples each run to the
card's TR (``fmriflow.datasets.regions``' resampler: polyphase, anti-aliased), scales it by the
card's method (``recipe_scaling``: the card's statistics where released, else refitted on the
training subjects of the dataset's ``splits.tsv``) and cuts windows of the card's length.
``prepare_voxels_step`` does NeuroSTORM's voxel recipe (``recipe_voxels``) on the MNI-resampled
BOLD. Both write, into one folder:

``windows.npy``
    float32, (windows, regions, time) or (windows, frames, X, Y, Z): the model's input layout;
``index.tsv``
    sample, run, subject, split, start, tr: one row per window (``start`` in frames at ``tr``); the voxel
    recipe adds onset and duration (s) on the denoised series' clock, the dataset windows' (dummy and
    censored volumes dropped: ``recipe_voxels.denoised_times``), and onset_raw, duration_raw from the
    preprocessed BOLD's volume 0, where its windows were cut;
``recipe.json``
    the card's recipe and what this step did with it (atlas, region order, TR, window, scaling
    and where its statistics came from, skipped runs), for the report; its provenance inside.

The arrays and the index have provenance sidecars. Runs too short for one window are listed as skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from ..datasets.regions import check_values, resample_series  # the dataset step's checks and resampler
from ..datasets.splits import read_splits
from ..errors import InputError
from ..io import atomic_path, read_json, read_tsv, sha256sum, write_json, write_tsv
from ..naming import RECIPE_PREPARED, subject_of
from ..provenance import build_sidecar, sidecar_path, write_sidecar
from . import recipe_scaling as scaling
from . import recipe_voxels as voxels
from .card import input_settings, read_card

log = logging.getLogger("fmriflow")
WINDOWS, INDEX, RECIPE = RECIPE_PREPARED
RESAMPLING = ("scipy.signal.resample_poly to the card's TR (the dataset step's resampler); none where the TR is "
              "the card's")


def _region_runs(card: Mapping, card_path: str, labels: str, runs: Sequence[str], timeseries: Sequence[str],
                 target_tr: float | None) -> list[dict[str, Any]]:
    """Each run's series (time x the card's regions, NaN for a dropped region) at the card's TR."""
    regions = card["atlas"]["regions"]
    ours = read_tsv(labels, dtype={"name": str})["name"].tolist()
    missing = [r for r in regions if r not in ours]
    if missing:
        raise InputError(labels, f"the project atlas lacks {len(missing)} of the {len(regions)} regions of the card "
                         f"{card_path} (e.g. {missing[:3]}); its region names must be the card's")
    out = []
    for run, path in zip(runs, timeseries):
        frame = read_tsv(path)
        frame.columns = [str(c) for c in frame.columns]
        x, valid = check_values(frame[regions], path)  # the card's region order; dropped regions all NaN
        tr = float(read_json(sidecar_path(path))["RepetitionTime"])
        x, stored = resample_series(x, valid, tr, target_tr)
        out.append({"run": run, "subject": subject_of(run), "tr": tr, "stored_tr": stored, "x": x, "path": path})
    return out


def _statistics(card: Mapping, card_path: str, method: str, series: list[dict], splits: str, window: int):
    """The scaling statistics and where they came from."""
    released = scaling.released_statistics(card) if method != "brainlm-vitmae" else None
    if released is not None:
        return released, f"the card's (released with the model, {card_path})"
    table = read_splits(splits)
    train = set(table.loc[table["split"] == "train", "subject"])
    runs = [s["x"] for s in series if s["subject"] in train]
    stats = scaling.fit_statistics(method, runs, window, card["scaling"].get("constant"))
    return stats, (f"refitted on this project's {len(train)} training subjects ({len(runs)} runs; {splits}): "
                   f"the card says {card['scaling'].get('statistics') or 'none were released'}")


def prepare_regions_step(card_path: str, atlas: str, labels: str, runs: Sequence[str], timeseries: Sequence[str],
                         splits: str, out_dir: str) -> dict[str, Any]:
    """The region recipe of the card at ``card_path`` on this project's runs; writes the folder above."""
    card = read_card(card_path)
    method = scaling.scaling_method(card, card_path)
    settings = input_settings(card)
    window = int(settings["window"])
    stride = int(card["input"].get("stride") or window)
    series = _region_runs(card, card_path, labels, runs, timeseries, settings["target_tr"])
    stats, source = _statistics(card, card_path, method, series, splits, window)
    split_of = read_splits(splits).set_index("subject")["split"].to_dict()
    windows, rows, skipped = [], [], []
    for s in series:
        scaled = scaling.apply(method, stats, s["x"])  # regions x time
        starts = list(range(0, scaled.shape[1] - window + 1, stride))
        if not starts:
            skipped.append({"run": s["run"], "reason": f"{scaled.shape[1]} time points at TR {s['stored_tr']} s, "
                                                        f"fewer than one window of {window}"})
        for start in starts:
            rows.append({"sample": len(rows), "run": s["run"], "subject": s["subject"],
                         "split": split_of.get(s["subject"], "none"), "start": start, "tr": s["stored_tr"]})
            windows.append(scaled[:, start:start + window])
    array = np.stack(windows) if windows else np.zeros((0, len(card["atlas"]["regions"]), window), np.float32)
    done = {"kind": "regions", "project_atlas": atlas, "atlas_labels": labels, "window": window, "stride": stride,
            "target_tr": settings["target_tr"], "resampling": RESAMPLING,
            "tr_of_runs": sorted({s["tr"] for s in series}),
            "scaling": {"method": method, "statistics_from": source, "statistics": scaling.as_json(stats)},
            "skipped_runs": skipped}
    inputs = [card_path, labels, splits, *(s["path"] for s in series)]
    return _write(out_dir, array, pd.DataFrame(rows), card, card_path, done, inputs)


def prepare_voxels_step(card_path: str, runs: Sequence[str], bolds: Sequence[str], masks: Sequence[str],
                        splits: str, out_dir: str, denoised: Sequence[str]) -> dict[str, Any]:
    """NeuroSTORM's voxel recipe of the card on this project's MNI-resampled runs; writes the folder above.
    ``denoised``: each run's denoised BOLD, whose sidecar's ``OutputVolumes`` puts the windows on its clock."""
    from ..io import load_nifti, open_nifti

    card = read_card(card_path)
    voxels.check_grid(card, card_path)
    window, step = int(card["input"]["window"]), int(card["input"].get("frame_step") or 1)
    stride = int(card["input"].get("stride") or window)
    target, shape = card["input"]["tr"]["target_tr"], tuple(card["atlas"]["grid"]["shape"])
    plans = []
    for run, bold in zip(runs, bolds):  # headers only: how many windows each run gives
        header = open_nifti(bold).header
        tr, n = float(header.get_zooms()[3]), int(header.get_data_shape()[3])
        plans.append((tr, n, voxels.window_starts(int(round(n * tr / target)), window, stride, step)))
    kept = _output_volumes(runs, denoised)
    split_of = read_splits(splits).set_index("subject")["split"].to_dict()
    out, rows, skipped, runs_done = Path(out_dir), [], [], []
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WINDOWS) as tmp:
        array = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(sum(len(p[2]) for p in plans), window, *shape))
        for run, bold, mask, (tr, n, starts) in zip(runs, bolds, masks, plans):
            if not starts:
                skipped.append({"run": run, "reason": f"fewer than one window of {window} frames at {target} s"})
                continue
            data = np.asanyarray(load_nifti(bold).dataobj)
            try:
                frames, info = voxels.prepare_run(data, np.asanyarray(load_nifti(mask).dataobj) > 0, tr, card)
            except ValueError as exc:
                raise InputError(bold, str(exc)) from exc
            runs_done.append({"run": run, **info})
            onset_raw, duration_raw = np.asarray(starts, float) * target, ((window - 1) * step + 1) * target
            onset, duration = voxels.denoised_times(onset_raw, np.full(len(starts), duration_raw), tr, kept[run], n)
            for k, start in enumerate(starts):
                array[len(rows)] = frames[start:start + (window - 1) * step + 1:step]
                rows.append({"sample": len(rows), "run": run, "subject": subject_of(run),
                             "split": split_of.get(subject_of(run), "none"), "start": start, "tr": target,
                             "onset": onset[k], "duration": duration[k], "onset_raw": onset_raw[k],
                             "duration_raw": duration_raw})
        array.flush()
        del array
    done = {"kind": "voxels", "grid": list(shape), "window": window, "frame_step": step, "stride": stride,
            "target_tr": target, "resampling": voxels.RESAMPLING,
            "scaling": {"method": card["scaling"]["method"], "statistics_from": "each run itself (per-run z-score)",
                        "runs": runs_done}, "skipped_runs": skipped}
    sidecars = [str(sidecar_path(d)) for d in denoised]
    return _write(out_dir, None, pd.DataFrame(rows), card, card_path, done,
                  [card_path, splits, *bolds, *masks, *sidecars])


def _output_volumes(runs: Sequence[str], denoised: Sequence[str]) -> dict[str, Any]:
    """Run -> its denoised series' ``OutputVolumes`` ("all" or raw-volume indices), from each sidecar."""
    if len(denoised) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(denoised)} denoised BOLD files")
    out = {}
    for run, path in zip(runs, denoised):
        side = sidecar_path(path)
        kept = (read_json(side).get("Provenance") or {}).get("Parameters", {}).get("OutputVolumes")
        if kept is None:
            raise InputError(str(side), "lacks Provenance.Parameters.OutputVolumes (the denoise step's record of the "
                                        "volumes it kept): rerun denoise")
        out[run] = kept
    return out


def _write(out_dir: str, array: np.ndarray | None, index: pd.DataFrame, card: Mapping, card_path: str,
           done: dict[str, Any], inputs: list[str]) -> dict[str, Any]:
    """``windows.npy`` (unless written already: ``array`` None), ``index.tsv``, ``recipe.json`` and their sidecars."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if array is not None:
        with atomic_path(out / WINDOWS) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
                np.save(fh, array.astype(np.float32))
    if index.empty:
        raise InputError(card_path, f"no run of this project is long enough for one window of the recipe "
                         f"({done['window']} frames): {[s['run'] for s in done['skipped_runs']][:5]}")
    write_tsv(out / INDEX, index)
    recipe = {"model": card["model"]["name"], "architecture": card["model"]["architecture"],
              "card": {"path": str(card_path), "sha256": sha256sum(card_path)},
              "card_recipe": {k: card[k] for k in ("input", "scaling", "preprocessing")},
              "card_atlas": {k: card["atlas"].get(k) for k in ("name", "n_regions", "grid")},
              "card_region_order": card["atlas"]["regions"][:3], "applied": done,
              "windows": len(index), "subjects": int(index["subject"].nunique())}
    parameters = {"kind": done["kind"], "model": recipe["model"]}
    # a JSON artefact holds its provenance inside (as a model card does), the arrays in sidecars
    recipe["Provenance"] = build_sidecar("recipe_prepare", inputs, parameters=parameters)["Provenance"]
    write_json(out / RECIPE, recipe)
    for name in (WINDOWS, INDEX):
        write_sidecar(out / name, "recipe_prepare", inputs, parameters=parameters)
    for run in done["skipped_runs"]:
        log.warning("%s gives no window of the recipe of %s: %s", run["run"], card_path, run["reason"])
    return recipe
