"""Rebuilding a bundle's encoder: the module from ``config.json``, the weights from ``model.safetensors``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..errors import InputError
from ..io import read_json
from ..models.brainlm import BrainLM, BrainLMConfig
from .card import CONFIG, WEIGHTS

ARCHITECTURES = ("BrainLM",)


def read_config(bundle: str | Path) -> BrainLMConfig:
    """The architecture of a bundle (its ``config.json``)."""
    path = Path(bundle) / CONFIG
    if not path.is_file():
        raise InputError(path, "no such file; an encoder bundle holds its architecture in config.json")
    try:
        config = read_json(path)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON ({exc})") from exc
    if config.get("architecture") not in ARCHITECTURES:
        raise InputError(path, f"'architecture' must be one of {ARCHITECTURES}; {config.get('architecture')!r} was found")
    fields = {f.name for f in dataclasses.fields(BrainLMConfig)}
    unknown = sorted(set(config["config"]) - fields)
    if unknown:
        raise InputError(path, f"unknown BrainLMConfig field(s) {unknown}; this fmriflow knows {sorted(fields)}")
    return BrainLMConfig(**config["config"])


def config_json(model: BrainLM) -> dict:
    """What ``config.json`` holds for ``model``."""
    return {"architecture": type(model).__name__, "n_regions": model.n_regions,
            "config": dataclasses.asdict(model.config)}


def load_bundle_encoder(bundle: str | Path, pretrained: bool = True, seed: int = 0) -> BrainLM:
    """The bundle's encoder (eval mode); with ``pretrained=False`` the same shape, randomly initialised
    (seeded), as the no-pretraining control. The atlas coordinates come from the weights either way."""
    from safetensors.torch import load_file

    path = Path(bundle) / WEIGHTS
    if not path.is_file():
        raise InputError(path, "no such file; an encoder bundle holds its weights in model.safetensors")
    config = read_config(bundle)
    state = load_file(path)
    if "coords" not in state:
        raise InputError(path, "no 'coords' tensor (the atlas coordinates the encoder was pretrained with)")
    torch.manual_seed(seed)
    model = BrainLM(config, state["coords"])
    if pretrained:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # shapes or names that config.json does not describe
            raise InputError(path, f"the weights do not fit the architecture of {CONFIG} ({exc})") from exc
    return model.eval()
