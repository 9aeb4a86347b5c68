"""``fmriflow import-checkpoint KIND PATH OUT``: a local copy of released weights as an encoder bundle.

The user downloads the weights; nothing is fetched here. ``PATH`` is the release folder (its
``config.json`` beside ``pytorch_model.bin`` or ``model.safetensors``) or the weights file with
``config.json`` beside it. Every tensor is mapped onto the fmriflow module (``keymap``); the card
records the authors' input recipe (``recipes``) and the atlas the model was trained on.

Kinds:

``brainlm-v1``
    BrainLM's ``BrainLMForPretraining`` release (GitHub ``pretrained_models/``), into
    ``models.brainlm_v1.BrainLMv1``.
``brainlm-vitmae``
    BrainLM's ViT-MAE releases (``vitmae_111M``, ``vitmae_650M``), into ``transformers``'
    ``ViTMAEForPreTraining`` inside ``models.brainlm_vitmae.BrainLMViTMAE`` (extra ``transformers``).
``brain-jepa``
    Brain-JEPA's ``jepa-ep300.pth.tar`` (``import_jepa``).
``neurostorm``
    NeuroSTORM's Lightning checkpoints, MAE-pretrained or fine-tuned (``import_neurostorm``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import __version__
from ..atlas import A424_FILES, a424_labels_table, fetch_a424
from ..errors import InputError, SettingError
from ..io import sha256sum
from ..provenance import build_sidecar, write_sidecar
from .card import FORMAT_VERSION
from .keymap import KeyMap
from .read import json_file
from .recipes import BRAINLM_SOURCE, brainlm_v1_recipe, brainlm_vitmae_recipe
from .write import write_bundle

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")

_V1_BLOCK = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
             "attention.self.conv": "attn.conv", "attention.output.dense": "proj",
             "attention.output.LayerNorm": "norm1", "intermediate.dense": "fc1", "output.dense": "fc2",
             "output.LayerNorm": "norm2"}
V1_KEYMAP = KeyMap(
    rules=(
        (r"vit\.embeddings\.cls_token", "cls_token"),
        (r"vit\.embeddings\.signal_embedding_projection\.(weight|bias)", r"signal.\1"),
        (r"vit\.embeddings\.xyz_embedding_projection\.(weight|bias)", r"xyz.\1"),
        (r"vit\.embeddings\.pos_embedding\.pe", "time"),
        *((rf"vit\.encoder\.layer\.(\d+)\.{re.escape(theirs)}\.(weight|bias)", rf"blocks.\1.{ours}.\2")
          for theirs, ours in _V1_BLOCK.items()),
        (r"vit\.layernorm\.(weight|bias)", r"norm.\1"),
        (r"decoder\.mask_token", "mask_token"),
        (r"decoder\.(decoder_embed|decoder_norm|decoder_pred1|decoder_pred2)\.(weight|bias)", r"\1.\2"),
        *((rf"decoder\.decoder_layers\.(\d+)\.{re.escape(theirs)}\.(weight|bias)",
           rf"decoder_blocks.\1.{ours}.\2") for theirs, ours in _V1_BLOCK.items()),
        (r"decoder\.decoder_xyz_projection\.(weight|bias)", r"decoder_xyz.\1"),
        (r"decoder\.pos_embedding\.pe", "decoder_time"),
    ),
    dropped={r"decoder\.decoder_pred\.(weight|bias)": "the image head that BrainLMDecoder inherits from ViTMAEDecoder; "
                                                        "its forward predicts through decoder_pred1/2 only"},
    supplied=("coords",),
)
# released ViT-MAE layer names (transformers 4.x, as the release was saved) -> those of the pinned transformers 5
_VITMAE_BLOCK = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
                 "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj",
                 "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
                 "layernorm_before": "layernorm_before", "layernorm_after": "layernorm_after"}
VITMAE_KEYMAP = KeyMap(
    rules=(
        *((rf"vit\.encoder\.layer\.(\d+)\.{re.escape(theirs)}\.(weight|bias)", rf"mae.vit.layers.\1.{ours}.\2")
          for theirs, ours in _VITMAE_BLOCK.items()),
        *((rf"decoder\.decoder_layers\.(\d+)\.{re.escape(theirs)}\.(weight|bias)", rf"mae.decoder.decoder_layers.\1.{ours}.\2")
          for theirs, ours in _VITMAE_BLOCK.items()),
        (r"(vit\.embeddings\..+|vit\.layernorm\..+|decoder\.(mask_token|decoder_pos_embed|decoder_embed\..+|"
         r"decoder_norm\..+|decoder_pred\..+))", r"mae.\1"),
    ),
    supplied=("coords", "region_order"))
# config.json fields of a Hugging Face release that are bookkeeping, not architecture
_HF_BOOKKEEPING = ("architectures", "transformers_version", "torch_dtype", "_name_or_path", "model_type")


def read_release(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path, Path]:
    """``(config, state dict, weights path, config path)`` of a release folder or weights file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_NAMES if (path / name).is_file()]
        if not found:
            raise InputError(path, f"no weights in the release folder; expected one of {', '.join(WEIGHT_NAMES)}")
        weights = found[0]
    elif path.is_file():
        weights = path
    else:
        raise InputError(path, "no such file or folder (the released checkpoint, downloaded beforehand)")
    config_path = weights.parent / "config.json"
    config = json_file(config_path, "the release's config.json must sit beside its weights")
    return config, load_weights(weights), weights, config_path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch pickle (read with ``weights_only``: nothing executed)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input
        raise InputError(path, f"not a loadable torch checkpoint ({exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "expected a flat state dict of tensors")
    return dict(state)


# --------------------------------------------------------------------------- BrainLM


def brainlm_v1_config(release: Mapping[str, Any], source: str | Path):
    """``BrainLMv1Config`` of a release's config.json; settings the twin does not reproduce are refused."""
    from ..models.brainlm_v1 import BrainLMv1Config

    needed = ("timepoint_patching_size", "num_timepoints_per_voxel", "hidden_size", "num_hidden_layers",
              "num_attention_heads", "intermediate_size", "decoder_hidden_size", "decoder_num_hidden_layers",
              "decoder_num_attention_heads", "decoder_intermediate_size", "conv_kernel_size", "mask_ratio",
              "layer_norm_eps", "attention_probs_dropout_prob")
    absent = [key for key in needed if key not in release]
    if absent:
        raise InputError(source, f"lacks {', '.join(absent)}; not a BrainLMForPretraining config.json")
    checks = {"num_landmarks": release.get("segment_means_seq_len"), "hidden_act": "gelu", "qkv_bias": True,
              "num_brain_voxels": 424, "decoder_hidden_size": release.get("hidden_size")}
    for key, allowed in checks.items():
        if release.get(key) != allowed:
            raise InputError(source, f"'{key}' is {release.get(key)!r}; fmriflow's twin of BrainLM v1 reproduces "
                             f"{allowed!r} only (exact attention, GELU, biased q/k/v, A424, decoder width = encoder)")
    return BrainLMv1Config(
        patch_size=release["timepoint_patching_size"], window=release["num_timepoints_per_voxel"],
        hidden=release["hidden_size"], n_layers=release["num_hidden_layers"], n_heads=release["num_attention_heads"],
        intermediate=release["intermediate_size"], decoder_hidden=release["decoder_hidden_size"],
        decoder_layers=release["decoder_num_hidden_layers"], decoder_heads=release["decoder_num_attention_heads"],
        decoder_intermediate=release["decoder_intermediate_size"], conv_kernel=release["conv_kernel_size"],
        mask_ratio=release["mask_ratio"], tanh_decoder=bool(release.get("use_tanh_decoder", False)),
        norm_eps=release["layer_norm_eps"], attention_dropout=release["attention_probs_dropout_prob"])


def build_brainlm_v1(release: Mapping[str, Any], coords, source: str | Path):
    from ..models.brainlm_v1 import BrainLMv1

    config = brainlm_v1_config(release, source)
    return BrainLMv1(config, coords), V1_KEYMAP, brainlm_v1_recipe(config.window, config.patch_size)


def vitmae_config(release: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in release.items() if k not in _HF_BOOKKEEPING}


def build_brainlm_vitmae(release: Mapping[str, Any], coords, source: str | Path):
    from ..models.brainlm_vitmae import BrainLMViTMAE

    model = BrainLMViTMAE(vitmae_config(release), coords)
    return model, VITMAE_KEYMAP, brainlm_vitmae_recipe(list(model.image_size), model.mae.config.patch_size)


KINDS: dict[str, Callable] = {"brainlm-v1": build_brainlm_v1, "brainlm-vitmae": build_brainlm_vitmae}
_EMBEDDING = "the CLS token of the encoder's output after its final LayerNorm, no masking (the authors' notebooks use the CLS token)"


def import_checkpoint(kind: str, path: str | Path, out_dir: str | Path, *, atlas_cache: str | Path,
                      pinned_cache: str | Path | None = None, atlas_dir: str | Path | None = None,
                      gradient: str | Path | None = None) -> dict[str, Path]:
    """Write the bundle of the release at ``path`` into ``out_dir``; returns the bundle's paths.

    ``atlas_cache``: A424's cache (``atlas.cache_dir``; the BrainLM kinds); ``pinned_cache``: the pinned
    atlases' cache (``atlas.pinned_cache_dir``; brain-jepa, whose atlas is a pinned one). ``gradient``:
    Brain-JEPA's region gradient table (default: gradient_mapping_450.csv beside the checkpoint).
    """
    if kind == "brain-jepa":
        from .import_jepa import brain_jepa_parts

        if pinned_cache is None:
            raise SettingError("pinned_cache", "brain-jepa: 'pinned_cache' (the pinned atlases' cache, the config's "
                                               "atlas.pinned_cache_dir; the CLI's --pinned-cache) must be given; "
                                               "None was provided")
        parts = brain_jepa_parts(Path(path), gradient, pinned_cache, atlas_dir)
    elif kind == "neurostorm":
        from .import_neurostorm import neurostorm_parts

        parts = neurostorm_parts(Path(path))
    elif kind in KINDS:
        parts = _brainlm_parts(kind, path, atlas_cache, atlas_dir)
    else:
        raise ValueError(f"'KIND' must be one of {(*KINDS, 'brain-jepa', 'neurostorm')}; {kind!r} was provided")
    model = parts["model"]
    state = model.state_dict()
    state.update(parts["keymap"].apply(parts["released"], state, parts["weights"]))
    model.load_state_dict(state)
    weights = parts["weights"]
    card = {"Name": "fmriflow encoder bundle (imported release)", "format_version": FORMAT_VERSION,
            "fmriflow_version": __version__,
            "model": {"architecture": type(model).__name__, "name": kind,
                      "n_parameters": sum(p.numel() for p in model.parameters()), "embedding": parts["embedding"],
                      "source": {"kind": kind, "release": parts["release"], "weights": weights.name,
                                 "weights_sha256": sha256sum(weights), "tensors": len(parts["released"]),
                                 "dropped": dict(parts["keymap"].dropped), **parts["source"]}},
            "atlas": parts["atlas"], **parts["recipe"],
            "training": {"settings": parts["settings"], "final": None}}
    card["Provenance"] = build_sidecar("import-checkpoint", parts["inputs"], parameters={"kind": kind})["Provenance"]
    paths = write_bundle(out_dir, model, card)
    write_sidecar(paths["weights"], "import-checkpoint", parts["inputs"], also=[paths["config"], paths["card"]],
                  metadata_fields={"Description": f"released {kind} weights imported into fmriflow; model_card.json "
                                                  "records the authors' input recipe"})
    return paths


def _brainlm_parts(kind: str, path: str | Path, atlas_cache: str | Path, atlas_dir: str | Path | None) -> dict:
    release, released, weights, config_path = read_release(path)
    atlas = fetch_a424(atlas_cache, atlas_dir)
    labels = a424_labels_table(atlas["coordinates"])
    coords = labels[["x", "y", "z"]].to_numpy(dtype="float32")
    model, keymap, recipe = KINDS[kind](release, coords, config_path)
    return {"model": model, "keymap": keymap, "released": released, "weights": weights, "recipe": recipe,
            "inputs": [weights, config_path, atlas["coordinates"]], "release": BRAINLM_SOURCE,
            "source": {"config_sha256": sha256sum(config_path)}, "settings": dict(release),
            "embedding": _EMBEDDING + ("; their tutorial's forward masked 75% of the patches at random (the "
                                       "config's mask_ratio) before taking it" if kind == "brainlm-vitmae" else ""),
            "atlas": {"name": "A424", "sha256": A424_FILES["labels_img"].sha256,
                      "labels_sha256": A424_FILES["coordinates"].sha256, "n_regions": len(labels),
                      "regions": labels["name"].tolist(), "coordinates": coords.astype(float).tolist(),
                      "coordinate_space": "MNI152NLin6Asym (mm)"}}
