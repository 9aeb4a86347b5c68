"""A model card as text for a person (``fmriflow model-card BUNDLE``)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .card import input_settings


def format_card(card: Mapping[str, Any], regions: int = 5) -> str:
    """The card's sections as aligned lines; per-region lists shortened to their first ``regions`` rows
    (the full lists are in model_card.json)."""
    if "source" in card["model"]:
        return format_imported_card(card, regions)
    model, atlas, data = card["model"], card["atlas"], card["pretraining_data"]
    tr, prep = card["input"]["tr"], input_settings(card)
    final, scaling = card["training"]["final"], card["scaling"]
    hours = data["hours"]
    lines = [
        *_model_lines(card),
        "",
        "Preparing new data",
        _row("atlas", f"{atlas['name']}, {atlas['n_regions']} regions, image sha256 "
                      f"{atlas['sha256'] or 'none (an atlas given as a table)'}"),
        _row("region order", ", ".join(atlas["regions"][:regions]) + (" ..." if atlas["n_regions"] > regions else "")),
        _row("window", f"{card['input']['window']} time points, patches of {card['input']['patch_size']}"),
        _row("TR", f"stored at {', '.join(f'{t:g}' for t in tr['stored'])} s; target_tr {tr['target_tr'] or 'none'}; "
                   f"new data are resampled to {prep['target_tr']}"),
        _row("scaling", f"{scaling['method']}: {scaling['formula']}"),
        _row("fitted on", f"{scaling['fit_on']} ({scaling['n_timepoints']} time points)"),
        *_statistics(card, regions),
        _row("preprocessing", _flat(card["preprocessing"])),
        "",
        "Pretraining data",
        _row("subjects", f"{data['subjects']} (sha256 of their labels {data['subjects_sha256'][:16]}...)"),
        _row("runs", f"{data['runs']} ({data['skipped_runs']} more too short for a window)"),
        _row("hours", ", ".join(f"{k} {v:.2f}" for k, v in hours.items())),
        _row("manifest sha256", data["manifest_sha256"]),
        "",
        "Training",
        _row("settings", _flat(card["training"]["settings"])),
        _row("final losses", f"train {_num(final['train_loss'])} (step {final['train_loss_step']}), "
                             f"validation {_num(final['val_loss'])} (step {final['val_loss_step']}), "
                             f"{final['steps']} steps"),
        _row("continued from", _parent(card.get("parent"))),
    ]
    return "\n".join(lines)


def _parent(parent: Mapping[str, Any] | None) -> str:
    if parent is None:
        return "none (pretrained from random weights)"
    data = parent["pretraining_data"]
    return (f"the bundle with weights sha256 {parent['sha256']['model.safetensors'][:16]}... "
            f"({parent['model']['architecture']} '{parent['model']['name']}', {data['subjects']} subjects, "
            f"{data['hours']['all']:.2f} hours)")


def format_imported_card(card: Mapping[str, Any], regions: int = 5) -> str:
    """The card of an imported release: its source, the authors' input recipe, their pretraining data."""
    model, atlas, source, tr = card["model"], card["atlas"], card["model"]["source"], card["input"]["tr"]
    scaling = card["scaling"]
    lines = [
        *_model_lines(card),
        _row("release", source["release"]),
        _row("weights", f"{source['weights']} (sha256 {source['weights_sha256']}), {source['tensors']} tensors, "
                        f"{len(source['dropped'])} unused pattern(s) dropped"),
        "",
        "Preparing new data (the authors' recipe)",
        *_where(atlas, regions),
        _row("layout", card["input"]["layout"]),
        _row("window", f"{card['input']['window']} time points, patches of {card['input']['patch_size']}"),
        _row("TR", f"pretraining data at {', '.join(f'{t:g}' for t in tr['stored'])} s, model input at "
                   f"{tr['target_tr']:g} s; {tr['resampling']}"),
        _row("scaling", f"{scaling['method']}: {scaling['formula']}"),
        _row("statistics", scaling["statistics"]),
        _row("preprocessing", _flat(card["preprocessing"])),
        "",
        "Pretraining data",
        _row("source", card["pretraining_data"]["source"]),
        _row("reference", card["pretraining_data"]["reference"]),
    ]
    return "\n".join(lines)


def _where(atlas: Mapping[str, Any], regions: int) -> list[str]:
    """The atlas and region order, or for voxel input the grid."""
    if atlas.get("grid"):
        grid = atlas["grid"]
        return [_row("voxel grid", f"{grid['space']}, {grid['voxel_mm']} mm, "
                                   f"{' x '.join(map(str, grid['shape']))} voxels, {grid['frames']} frames")]
    return [_row("atlas", f"{atlas['name']}, {atlas['n_regions']} regions, image sha256 {atlas['sha256']}"),
            _row("region order", ", ".join(atlas["regions"][:regions]) + (" ..." if atlas["n_regions"] > regions else ""))]


def _model_lines(card: Mapping[str, Any]) -> list[str]:
    """The card's title and the model's lines, the same for trained and imported bundles."""
    model = card["model"]
    return [f"{card['Name']} (card format {card['format_version']}, fmriflow {card['fmriflow_version']})", "",
            "Model",
            _row("architecture", f"{model['architecture']} '{model['name']}', {model['n_parameters']:,} parameters"),
            _row("embedding", model["embedding"])]


def _statistics(card: Mapping[str, Any], regions: int) -> list[str]:
    names, median, iqr = card["atlas"]["regions"], card["scaling"]["median"], card["scaling"]["iqr"]
    rows = [_row("  " + name, f"median {_num(m)}, iqr {_num(q)}") for name, m, q in
            list(zip(names, median, iqr))[:regions]]
    defined = np.array([m is not None for m in median])
    rows.append(_row("  regions", f"{int(defined.sum())} with statistics, {int((~defined).sum())} without "
                                  "(masked); the full lists are in model_card.json"))
    return rows


def _row(label: str, text: str) -> str:
    return f"  {label:<18}{text}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _flat(section: Mapping[str, Any], where: str = "") -> str:
    parts = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            parts.append(_flat(value, f"{where}{key}."))
        else:
            parts.append(f"{where}{key}={value}")
    return ", ".join(parts)
