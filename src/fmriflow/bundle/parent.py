"""Continued pretraining from a bundle (``pretrain.init``): the model starts from the bundle's weights.

``init_from_bundle`` checks that the bundle fits this project (the card's atlas is the project's,
``config.json`` is the architecture the project asked for; either error names both sides), loads
the weights into the freshly built model and returns the ``parent`` record that the new bundle's
card keeps: the parent's checksums and a summary of its card, so that a chain of bundles can be
walked back without the parents' files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import sha256sum
from ..models.brainlm import BrainLM
from .card import CARD, CONFIG, FILES, WEIGHTS, check_atlas, read_card
from .read import read_config


def bundle_files(bundle: str | Path) -> list[Path]:
    """The bundle's three files (weights, config, card): what a run continued from it learns from."""
    return [Path(bundle) / name for name in FILES]


def init_from_bundle(model: BrainLM, bundle: str | Path, atlas: str, atlas_labels: str | Path) -> dict[str, Any]:
    """Load the bundle's weights into ``model`` (built as this project's ``pretrain.model``); its parent record.

    ``atlas``: this project's atlas name; ``atlas_labels``: its look-up table (region order), both
    compared with the card's (``check_atlas``; an atlas known by its table has no image to compare).
    """
    from safetensors.torch import load_file

    bundle = Path(bundle)
    card = read_card(bundle)
    check_atlas(card, bundle / CARD, atlas, None, atlas_labels)
    theirs = read_config(bundle)
    if theirs != model.config:
        ours, other = dataclasses.asdict(model.config), dataclasses.asdict(theirs)
        differ = {k: (other[k], ours[k]) for k in ours if ours[k] != other[k]}
        raise InputError(bundle / CONFIG, "pretrain.init: the bundle's architecture is not pretrain.model's: "
                         + "; ".join(f"{k} {a!r} in the bundle, {b!r} here" for k, (a, b) in differ.items())
                         + ". Continued pretraining keeps the bundle's architecture: set pretrain.model to it")
    state = load_file(bundle / WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(bundle / WEIGHTS, f"the weights do not fit the architecture of {CONFIG} ({exc})") from exc
    return parent_record(bundle, card)


def parent_record(bundle: Path, card: dict[str, Any]) -> dict[str, Any]:
    """The bundle's files' sha256 and its card's summary (model, atlas, data, final losses, version)."""
    data = card["pretraining_data"]
    return {
        "sha256": {name: sha256sum(bundle / name) for name in FILES},
        "model": card["model"],
        "atlas": {k: card["atlas"][k] for k in ("name", "sha256", "labels_sha256", "n_regions")},
        "pretraining_data": {k: data[k] for k in ("manifest_sha256", "dataset_card_sha256", "subjects", "runs", "hours")},
        "training": {"final": card["training"]["final"]},
        "parent": card.get("parent"),  # a chain of continued runs: the grandparent's record, and so on
        "fmriflow_version": card["fmriflow_version"],
    }
