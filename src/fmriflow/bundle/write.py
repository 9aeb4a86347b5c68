"""Writing a bundle: ``write_bundle`` (weights, architecture, card) and ``bundle_step``, the
pretraining project's step that packages its ``pretrain`` model with the dataset's card and scaling,
the atlas and the preprocessing config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..datasets.regions import SCALING
from ..io import atomic_path, write_json
from ..models.brainlm import BrainLM, BrainLMConfig
from ..provenance import build_sidecar, write_sidecar
from .card import CARD, CONFIG, WEIGHTS, build_card
from .read import config_json


def write_bundle(out_dir: str | Path, model: nn.Module, card: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``model`` and ``card`` as a bundle in ``out_dir``; each file atomically. Returns the paths."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    paths = {"weights": out / WEIGHTS, "config": out / CONFIG, "card": out / CARD}
    # contiguous copies on the CPU: safetensors stores plain tensors, not views of shared storage
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    with atomic_path(paths["weights"]) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(paths["config"], config_json(model))
    write_json(paths["card"], card)
    return paths


def bundle_step(model_pt: str, metrics_csv: str, dataset_card: str, atlas_name: str, atlas_image: str | None,
                atlas_labels: str, manifest: str, out_dir: str, *, preprocessing: Mapping[str, Any]) -> None:
    """The ``pretrain`` rule's model as a bundle in ``out_dir``, with the weights' provenance sidecar."""
    state = torch.load(model_pt, map_location="cpu", weights_only=False)
    model = BrainLM(BrainLMConfig(**state["model_config"]), state["model"]["coords"])
    model.load_state_dict(state["model"])
    inputs = [p for p in (model_pt, metrics_csv, dataset_card, atlas_image, atlas_labels, manifest) if p]
    card = build_card(
        model_info={k: v for k, v in state.items() if k != "model"}, dataset_card=dataset_card,
        scaling_tsv=Path(dataset_card).with_name(SCALING), atlas_name=atlas_name, atlas_image=atlas_image,
        atlas_labels=atlas_labels, manifest=manifest, metrics_csv=metrics_csv, preprocessing=preprocessing,
        n_parameters=sum(p.numel() for p in model.parameters()),
    )
    card["Provenance"] = build_sidecar("bundle", inputs, config=preprocessing)["Provenance"]
    paths = write_bundle(out_dir, model, card)
    write_sidecar(paths["weights"], "bundle", inputs, also=[paths["config"], paths["card"]],
                  metadata_fields={"Description": "pretrained encoder weights; config.json rebuilds the module, "
                                                  "model_card.json says how to prepare data for it"})
