"""Brain-JEPA's released checkpoint (``jepa-ep300.pth.tar``) into ``models.brain_jepa.BrainJEPA``.

The checkpoint holds the pretraining state: ``target_encoder`` (the EMA encoder, which the
authors' downstream code loads), ``encoder`` (the online encoder), ``predictor`` and the
optimiser's state. The target encoder is imported, every tensor of it mapped; the rest is listed
in the card as not imported. Its shape (width, depth, patch, frames) is read from the tensors, the
heads from the width (64 channels a head, as the authors' ViT sizes). The region gradients
(``gradient_mapping_450.csv`` of the authors' repository) are not in the checkpoint: they are read
from the file given and kept in the bundle.

The card's atlas is ``Schaefer400N17TianS3`` (``fmriflow.atlas_pinned``: Tian S3 then Schaefer-400
in its 17-network order, the order of the authors' input), its region names read from the pinned
atlas's table, so that a project naming it under ``atlas.pinned`` runs the recipe without more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import sha256sum
from .keymap import KeyMap
from .recipes import BRAIN_JEPA_SOURCE, brain_jepa_recipe

GRADIENT_FILE = "gradient_mapping_450.csv"
JEPA_ATLAS = "Schaefer400N17TianS3"
_BLOCK = {"norm1": "ln1", "norm2": "ln2", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
          "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
JEPA_KEYMAP = KeyMap(
    rules=(
        (r"module\.patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
        (r"module\.pos_embed_proj\.emb_h", "time"),
        (r"module\.pos_embed_proj\.predictor_pos_embed_proj\.(weight|bias)", r"gradient_proj.\1"),
        *((rf"module\.blocks\.(\d+)\.{re.escape(theirs)}\.(weight|bias)", rf"blocks.\1.{ours}.\2")
          for theirs, ours in _BLOCK.items()),
        (r"module\.norm\.(weight|bias)", r"norm.\1"),
    ),
    supplied=("gradient",),
)
NOT_IMPORTED = {"encoder": "the online encoder of JEPA training (the downstream code loads the target encoder)",
                "predictor": "the JEPA predictor (training only)", "opt": "optimiser state", "scaler": "AMP scaler"}


def read_gradient(path: Path) -> np.ndarray:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a comma-separated table of numbers (Brain-JEPA's region gradients: {exc})") from exc
    return table.astype(np.float32)


def jepa_config(state: dict[str, torch.Tensor], n_regions: int, source: Path):
    from ..models.brain_jepa import BrainJEPAConfig

    try:
        conv = state["module.patch_embed.proj.weight"]  # (H, 1, 1, P)
        rows = state["module.pos_embed_proj.emb_h"].shape[0]  # R * N
        gradient_dims = state["module.pos_embed_proj.predictor_pos_embed_proj.weight"].shape[1]
    except KeyError as exc:
        raise InputError(source, f"the target encoder lacks {exc}; not a Brain-JEPA checkpoint") from exc
    hidden, patch = conv.shape[0], conv.shape[-1]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"module\.blocks\.(\d+)\.", k)))
    return BrainJEPAConfig(n_regions=n_regions, n_frames=rows // n_regions * patch, patch_size=patch, hidden=hidden,
                           n_layers=layers, n_heads=hidden // 64, gradient_dims=gradient_dims)


def jepa_atlas(n_regions: int, gradient_path: Path, pinned_cache: str | Path,
               atlas_dir: str | Path | None) -> dict[str, Any]:
    """The card's atlas: the pinned Schaefer400N17TianS3, fetched and verified into ``pinned_cache``.

    ``pinned_cache``: the pinned atlases' shared cache, the workflow's ``atlas.pinned_cache_dir``
    (given as such, not guessed from A424's ``atlas.cache_dir``), so that files the workflow
    fetched serve the import and the other way round.
    """
    from ..atlas_pinned import pinned_atlas_files, pinned_atlas_table

    spec, files = pinned_atlas_files(JEPA_ATLAS, pinned_cache, atlas_dir)
    if n_regions != spec.n_regions:
        raise InputError(gradient_path, f"{n_regions} regions; Brain-JEPA's atlas {JEPA_ATLAS} has {spec.n_regions} "
                         "(the gradient table has a row per region)")
    table = pinned_atlas_table(spec, files)
    # the image sha256 stays null: projects parcellate the atlas put on their own grid (a re-written file)
    return {"name": JEPA_ATLAS, "sha256": None, "labels_sha256": None, "n_regions": spec.n_regions,
            "regions": table["name"].tolist(), "coordinates": table[["x", "y", "z"]].to_numpy(float).tolist(),
            "coordinate_space": "MNI152NLin6Asym (mm)",
            "files": {f.name: {"URL": f.url, "sha256": f.sha256} for f in spec.files.values()},
            "derived_image_sha256": sha256sum(files["image"]) if spec.derive else None}


def brain_jepa_parts(path: Path, gradient: str | Path | None, pinned_cache: str | Path,
                     atlas_dir: str | Path | None = None) -> dict[str, Any]:
    """What ``imports.import_checkpoint`` needs of a Brain-JEPA checkpoint (``pinned_cache``: :func:`jepa_atlas`)."""
    from ..models.brain_jepa import BrainJEPA

    if not path.is_file():
        raise InputError(path, "no such file (Brain-JEPA's jepa-ep300.pth.tar, downloaded beforehand)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input
        raise InputError(path, f"not a loadable torch checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or "target_encoder" not in checkpoint:
        raise InputError(path, "no 'target_encoder' entry; not a Brain-JEPA pretraining checkpoint")
    gradient_path = Path(gradient) if gradient else path.parent / GRADIENT_FILE
    if not gradient_path.is_file():
        raise InputError(gradient_path, f"no such file; Brain-JEPA's region gradients ({GRADIENT_FILE} of the "
                         "authors' repository) are needed beside the checkpoint or given with --gradient")
    table = read_gradient(gradient_path)
    released = dict(checkpoint["target_encoder"])
    config = jepa_config(released, table.shape[0], path)
    model = BrainJEPA(config, table)
    atlas = jepa_atlas(config.n_regions, gradient_path, pinned_cache, atlas_dir)
    skipped = {k: NOT_IMPORTED.get(k, "training bookkeeping") for k in checkpoint if k != "target_encoder"}
    return {"model": model, "keymap": JEPA_KEYMAP, "released": released, "weights": path,
            "recipe": brain_jepa_recipe(config.n_frames, config.patch_size),
            "inputs": [path, gradient_path], "release": BRAIN_JEPA_SOURCE,
            "source": {"gradient": gradient_path.name, "gradient_sha256": sha256sum(gradient_path),
                       "imported_entry": "target_encoder", "not_imported": skipped},
            "embedding": "the mean of the target encoder's output tokens after its final LayerNorm, no masking "
                         "(the authors' downstream global pooling)",
            "settings": {"model_name": f"vit (hidden {config.hidden}, {config.n_layers} layers)",
                         "epoch": checkpoint.get("epoch")},
            "atlas": atlas}
