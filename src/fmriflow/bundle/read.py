"""Rebuilding a bundle's encoder: the module from ``config.json``, the weights from ``model.safetensors``.

Architectures: ``BrainLM`` (fmriflow's own, pretrained by the workflow) and the imported releases
``BrainLMv1`` (BrainLM's v1 twin) and ``BrainLMViTMAE`` (BrainLM's ViT-MAE models through
``transformers``), each rebuilt from its config and the atlas coordinates its weights carry; and
``BrainJEPA`` (Brain-JEPA's target encoder), rebuilt with the region gradients its weights carry;
``NeuroSTORM`` and ``NeuroSTORMReleasedMAE`` (voxel input, no atlas geometry), rebuilt from their config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..io import read_json
from ..models.brainlm import BrainLM, BrainLMConfig
from .card import CONFIG, WEIGHTS

ARCHITECTURES = ("BrainLM", "BrainLMv1", "BrainLMViTMAE", "BrainJEPA", "NeuroSTORM", "NeuroSTORMReleasedMAE")



def json_file(path: Path, where: str) -> Any:
    """The JSON in ``path``; a missing or unreadable file is an InputError naming it (``where``: what
    should hold it)."""
    if not path.is_file():
        raise InputError(path, f"no such file; {where}")
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON ({exc})") from exc

def _config_class(architecture: str):
    if architecture == "BrainLMv1":
        from ..models.brainlm_v1 import BrainLMv1Config

        return BrainLMv1Config
    if architecture == "BrainJEPA":
        from ..models.brain_jepa import BrainJEPAConfig

        return BrainJEPAConfig
    if architecture in ("NeuroSTORM", "NeuroSTORMReleasedMAE"):
        from ..models.neurostorm import NeuroSTORMConfig

        return NeuroSTORMConfig
    return BrainLMConfig


def read_config(bundle: str | Path) -> Any:
    """The architecture of a bundle (its ``config.json``): a config dataclass, or for ``BrainLMViTMAE``
    the dict of the ``transformers`` config and the pooling."""
    path = Path(bundle) / CONFIG
    config = json_file(path, "an encoder bundle holds its architecture in config.json")
    architecture = config.get("architecture")
    if architecture not in ARCHITECTURES:
        raise InputError(path, f"'architecture' must be one of {ARCHITECTURES}; {architecture!r} was found")
    if architecture == "BrainLMViTMAE":
        return dict(config["config"])
    cls = _config_class(architecture)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config["config"]) - fields)
    if unknown:
        raise InputError(path, f"unknown {cls.__name__} field(s) {unknown}; this fmriflow knows {sorted(fields)}")
    return cls(**config["config"])


def config_json(model: nn.Module) -> dict:
    """What ``config.json`` holds for ``model``."""
    if type(model).__name__ == "BrainLMViTMAE":
        config = {"hf_config": model.hf_config, "pool": model.pool}
    else:
        config = dataclasses.asdict(model.config)
    return {"architecture": type(model).__name__, "n_regions": getattr(model, "n_regions", None), "config": config}


def _build(config: Any, state: dict[str, torch.Tensor], path: Path, architecture: str) -> nn.Module:
    """The module of ``config``, with the atlas geometry (coordinates, or Brain-JEPA's gradients) of ``state``."""
    if architecture == "NeuroSTORMReleasedMAE":  # voxel input: no geometry
        from ..models.neurostorm_release import NeuroSTORMReleasedMAE

        return NeuroSTORMReleasedMAE(config)
    if architecture == "NeuroSTORM":
        from ..models.neurostorm import NeuroSTORM

        return NeuroSTORM(config)
    geometry = "gradient" if type(config).__name__ == "BrainJEPAConfig" else "coords"
    if geometry not in state:
        raise InputError(path, f"no {geometry!r} tensor (the atlas geometry the encoder was pretrained with)")
    coords = state[geometry]
    if geometry == "gradient":
        from ..models.brain_jepa import BrainJEPA

        return BrainJEPA(config, coords.numpy())
    if isinstance(config, BrainLMConfig):
        return BrainLM(config, coords)
    if isinstance(config, dict):
        from ..models.brainlm_vitmae import BrainLMViTMAE

        return BrainLMViTMAE(config["hf_config"], coords.numpy(), pool=config["pool"])
    from ..models.brainlm_v1 import BrainLMv1

    return BrainLMv1(config, coords.numpy())


def load_bundle_encoder(bundle: str | Path, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """The bundle's encoder (eval mode); with ``pretrained=False`` the same shape, randomly initialised
    (seeded), as the no-pretraining control. The atlas coordinates come from the weights either way."""
    from safetensors.torch import load_file

    path = Path(bundle) / WEIGHTS
    if not path.is_file():
        raise InputError(path, "no such file; an encoder bundle holds its weights in model.safetensors")
    config = read_config(bundle)
    state = load_file(path)
    torch.manual_seed(seed)
    model = _build(config, state, path, json_file(Path(bundle) / CONFIG, "")["architecture"])
    if pretrained:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # shapes or names that config.json does not describe
            raise InputError(path, f"the weights do not fit the architecture of {CONFIG} ({exc})") from exc
    return model.eval()
