"""The model card of an encoder bundle: what a project needs to prepare new data as the encoder's
pretraining data were prepared, and where the encoder came from.

``build_card`` gathers it from the pretraining project's artefacts, ``check_atlas`` refuses a
project whose atlas is not the card's, ``card_scaling`` / ``input_settings`` give the dataset
step the card's statistics, window and TR, and ``format_card`` prints it for a person.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..io import read_json, read_tsv, sha256sum

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "model_card.json"
FILES = (WEIGHTS, CONFIG, CARD)

# every top-level field of a card (format_version 1); ``read_card`` refuses one that lacks any
CARD_FIELDS = ("Name", "format_version", "fmriflow_version", "model", "atlas", "input", "scaling",
               "preprocessing", "pretraining_data", "training", "Provenance")
# fields a card may lack (read_card takes cards written before them): ``parent`` (pretrain.init)
OPTIONAL_FIELDS = ("parent",)
SCALING_FORMULA = "(x - median) / iqr per region, on each run's series after resampling; a region whose median is null is masked (0)"
# the run table fields of a dataset card that the fingerprint sums over
_SPLITS = ("train", "val", "test")
# TrainConfig fields that are paths on the pretraining machine: left out of the card
_PATHS = ("dataset", "out", "coords", "participants", "init_from")


def build_card(*, model_info: Mapping[str, Any], dataset_card: str | Path, scaling_tsv: str | Path,
               atlas_name: str, atlas_image: str | Path | None, atlas_labels: str | Path, manifest: str | Path,
               metrics_csv: str | Path, preprocessing: Mapping[str, Any], n_parameters: int) -> dict[str, Any]:
    """The card of an encoder pretrained on the dataset folder of ``dataset_card``.

    ``model_info``: ``model.pt``'s entries besides the weights (``config``: the training settings,
    ``model_config``: the architecture); ``preprocessing``: the config of the steps before the
    dataset (``preproc.mode``, ``denoise``, ``parcellate``); ``atlas_image`` None: an atlas known by its
    table alone (region time series input), whose card then holds no image sha256.
    """
    data = read_json(dataset_card)
    labels = read_tsv(atlas_labels, dtype={"name": str})
    scaling = read_tsv(scaling_tsv, dtype={"region": str})
    regions = labels["name"].tolist()
    if scaling["region"].tolist() != regions:
        raise InputError(scaling_tsv, f"its regions are not those of the atlas table {atlas_labels} in its order")
    arch = dict(model_info["model_config"])
    return {
        "Name": "fmriflow encoder bundle",
        "format_version": FORMAT_VERSION,
        "fmriflow_version": __version__,
        "model": {"architecture": "BrainLM", "name": model_info["config"]["model"], "n_parameters": n_parameters,
                  "embedding": f"{arch['pool']} pooling of the encoder's output, {arch['hidden']} values per window"},
        "atlas": {"name": atlas_name, "sha256": sha256sum(atlas_image) if atlas_image else None,
                  "labels_sha256": sha256sum(atlas_labels),
                  "n_regions": len(regions), "regions": regions,
                  "coordinates": labels[["x", "y", "z"]].to_numpy(dtype=float).tolist(),
                  "coordinate_space": "MNI152NLin6Asym (mm)"},
        "input": {"window": data["window"], "patch_size": arch["patch_size"], "stride": data["stride"],
                  "tr": {"target_tr": data["tr"]["target_tr"], "stored": data["tr"]["stored"],
                         "resampling": data["tr"]["resampling"]},
                  "layout": data["layout"], "dtype": data["dtype"]},
        "scaling": {"method": "robust", "formula": SCALING_FORMULA, "fit_on": data["scaling"]["fit_on"],
                    "n_timepoints": data["scaling"]["n_timepoints"],
                    "median": _nullable(scaling["median"]), "iqr": _nullable(scaling["iqr"]),
                    "regions_with_zero_iqr": data["scaling"]["regions_with_zero_iqr"]},
        "preprocessing": dict(preprocessing),
        "pretraining_data": _fingerprint(data, dataset_card, manifest),
        "training": {"settings": {k: v for k, v in model_info["config"].items() if k not in _PATHS},
                     "final": _final_losses(metrics_csv)},
        # pretrain.init: the bundle this encoder continued from (its checksums and card summary); null: from scratch
        "parent": model_info.get("parent"),
    }


def _fingerprint(data: Mapping[str, Any], dataset_card: str | Path, manifest: str | Path) -> dict[str, Any]:
    """Counts and checksums of the pretraining data. Subject labels are summarised by one sha256,
    not listed: a bundle may travel where the cohort's identifiers may not, and the same
    cohort still gives the same fingerprint."""
    runs = data["runs"]
    hours = {split: sum(r["n_timepoints"] * r["tr_stored"] for r in runs if r["split"] == split) / 3600
             for split in _SPLITS}
    subjects = sorted({r["subject"] for r in runs})
    return {
        "manifest_sha256": sha256sum(manifest),
        "dataset_card_sha256": sha256sum(dataset_card),
        "subjects": len(subjects),
        "subjects_sha256": hashlib.sha256("\n".join(subjects).encode()).hexdigest(),
        "runs": len(runs),
        "hours": {**hours, "all": sum(hours.values())},
        "splits": data["splits"],
        "skipped_runs": len(data["skipped_runs"]),
    }


def _final_losses(metrics_csv: str | Path) -> dict[str, Any]:
    """The last logged train loss and validation loss (with their steps) of ``metrics.csv``."""
    table = pd.read_csv(metrics_csv)
    out: dict[str, Any] = {"steps": int(table["step"].max()) if len(table) else 0}
    for column in ("train_loss", "val_loss"):
        rows = table.dropna(subset=[column])
        out[column] = float(rows[column].iloc[-1]) if len(rows) else None
        out[f"{column}_step"] = int(rows["step"].iloc[-1]) if len(rows) else None
    return out


def _nullable(values: pd.Series) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.to_numpy(dtype=np.float64)]


# --------------------------------------------------------------------------- using a card


def check_atlas(card: Mapping[str, Any], card_path: str | Path, atlas_name: str, atlas_image: str | Path | None,
                atlas_labels: str | Path) -> None:
    """Refuse a project atlas that is not the card's: name, image sha256 and region order must agree.

    The image sha256 is compared where both sides have an image (an atlas given as a table of
    regions and coordinates has none); name and region order always.

    The error names both atlases (name, sha256, files) and the first region that differs.
    """
    ours = {"name": atlas_name, "sha256": sha256sum(atlas_image) if atlas_image else None}
    theirs = card["atlas"]
    regions = read_tsv(atlas_labels, dtype={"name": str})["name"].tolist()
    problem = None
    images_differ = None not in (theirs["sha256"], ours["sha256"]) and theirs["sha256"] != ours["sha256"]
    if theirs["name"] != ours["name"] or images_differ:
        problem = "another atlas"
    elif regions != theirs["regions"]:
        at = next((i for i, (a, b) in enumerate(zip(regions, theirs["regions"])) if a != b),
                  min(len(regions), len(theirs["regions"])))
        problem = (f"the same atlas image with another region order ({len(regions)} regions here, "
                   f"{len(theirs['regions'])} in the card; region {at + 1} differs)")
    if problem:
        raise InputError(card_path, f"the encoder was pretrained on atlas {theirs['name']} (image sha256 "
                         f"{theirs['sha256']}), but this project's atlas is {ours['name']} (image {atlas_image}, "
                         f"sha256 {ours['sha256']}; look-up table {atlas_labels}): {problem}. An encoder takes the "
                         f"regions it was pretrained on, in their order")


def card_scaling(card: Mapping[str, Any]) -> pd.DataFrame:
    """The card's statistics as a ``scaling.tsv`` table (region, median, iqr; NaN where null)."""
    if card["scaling"]["median"] is None:  # an imported release whose authors did not publish them
        raise InputError(None, f"the encoder's card holds no scaling statistics ({card['scaling'].get('statistics')}); "
                         "set finetune.scaling to 'refit'", settings=("finetune.scaling",))
    to_float = lambda values: np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # noqa: E731
    return pd.DataFrame({"region": card["atlas"]["regions"], "median": to_float(card["scaling"]["median"]),
                         "iqr": to_float(card["scaling"]["iqr"])})


def input_settings(card: Mapping[str, Any]) -> dict[str, Any]:
    """Window and target TR for preparing new data as the card's: the card's target TR, else the
    one TR its pretraining data were stored at (None: they had several, each run keeps its own)."""
    tr = card["input"]["tr"]
    target = tr["target_tr"]
    if target is None and len(tr["stored"]) == 1:
        target = tr["stored"][0]
    return {"window": card["input"]["window"], "target_tr": target}


def read_card(path: str | Path) -> dict[str, Any]:
    """A bundle's card (``path``: the bundle folder or its ``model_card.json``), every field checked present."""
    path = Path(path)
    path = path / CARD if path.is_dir() else path
    if not path.is_file():
        raise InputError(path, f"no such file; an encoder bundle holds {', '.join(FILES)}")
    try:
        card = read_json(path)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not a JSON model card ({exc})") from exc
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise InputError(path, f"not an fmriflow model card: it lacks {', '.join(missing)}")
    if card["format_version"] != FORMAT_VERSION:
        raise InputError(path, f"model card format_version {card['format_version']!r}; this fmriflow "
                         f"({__version__}) reads {FORMAT_VERSION}")
    return card
