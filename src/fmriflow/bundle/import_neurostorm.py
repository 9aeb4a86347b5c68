"""NeuroSTORM's released Lightning checkpoints into ``models.neurostorm.NeuroSTORM``.

A checkpoint of the authors' ``LightningModel`` holds ``state_dict`` (the network under
``model.``, a fine-tuned task head under ``output_head.``) and ``hyper_parameters`` (their
argparse settings: ``img_size``, ``patch_size``, ``embed_dim``, ``depths``, ``window_size``,
``first_window_size``, ``last_layer_full_MSA``, ...), from which the fmriflow config is built.

Two kinds of release load:
- an MAE pretraining checkpoint (``pretraining`` and ``use_mae``): encoder, window mask tokens and
  decoder, into ``models.neurostorm_release.NeuroSTORMReleasedMAE`` (its ``encoder`` is what the
  authors' fine-tuning loads); the tokens of their other masking modes are dropped by name;
- a fine-tuned checkpoint (classification or regression, their ``v1`` linear head, with or without
  task prompts): backbone and head.
Every other tensor is an error that lists it (``keymap``).

The file is read with ``torch.load(weights_only=True)``: nothing in it is executed. Lightning's
``AttributeDict`` and argparse's ``Namespace`` (hyper-parameter containers) are read as plain
dicts; any other class in the pickle is refused by name.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import InputError
from .keymap import KeyMap
from .recipes import NEUROSTORM_SOURCE, neurostorm_recipe

# where Lightning's hyper-parameter dict class has lived (pytorch_lightning 1.x / 2.x, lightning 2.x)
_ATTRIBUTE_DICTS = ("pytorch_lightning.utilities.parsing", "lightning.pytorch.utilities.parsing",
                    "lightning_fabric.utilities.data", "lightning.fabric.utilities.data")
_ALLOWED_NAMES = ("argparse.Namespace", *(f"{m}.AttributeDict" for m in _ATTRIBUTE_DICTS))
_NEEDED = ("model", "img_size", "patch_size", "embed_dim", "depths", "window_size", "c_multiplier", "in_chans")
MASKING = ("the mask tokens of their random, tube and atlas masking and the atlas map (fmriflow's twin "
           "reproduces window masking, with window_mask_token)")


def _plain_dict(cls, *args, **kwargs) -> dict:
    return {}


def _stand_in(module: str) -> type:
    """Stands for Lightning's ``AttributeDict`` of ``module`` in the unpickler; what it builds is a plain
    dict (torch's safe unpickler fills dicts only, not subclasses)."""
    return type("AttributeDict", (dict,), {"__module__": module, "__qualname__": "AttributeDict",
                                           "__new__": _plain_dict})


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read without executing anything; hyper-parameters as a plain dict."""
    if not path.is_file():
        raise InputError(path, "no such file (NeuroSTORM's released .ckpt / .pth, downloaded beforehand)")
    allowed = [argparse.Namespace, *(_stand_in(m) for m in _ATTRIBUTE_DICTS)]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input
        try:
            named = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - set(_ALLOWED_NAMES))
        except Exception:  # noqa: BLE001 - not even a torch archive
            named = []
        found = f"it refers to {', '.join(named)}" if named else str(exc).splitlines()[0][:300]
        raise InputError(path, f"not a checkpoint that loads without executing code: {found}") from exc
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise InputError(path, "no 'state_dict' entry; not a Lightning checkpoint of NeuroSTORM's LightningModel")
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    if not isinstance(hparams, Mapping):
        raise InputError(path, "no 'hyper_parameters' entry; the architecture cannot be read from the checkpoint")
    return {**checkpoint, "hyper_parameters": dict(hparams)}


def _refuse(path: Path, key: str, value: Any, allowed: str) -> InputError:
    return InputError(path, f"hyper-parameter '{key}' is {value!r}; fmriflow's NeuroSTORM imports {allowed}")


def neurostorm_settings(hp: Mapping[str, Any], path: Path) -> tuple[Any, str]:
    """``(NeuroSTORMConfig, role)`` of a checkpoint's hyper-parameters; role: 'mae' or 'finetuned'."""
    from ..models.neurostorm import NeuroSTORMConfig

    absent = [k for k in _NEEDED if k not in hp]
    if absent:
        raise InputError(path, f"hyper_parameters lack {', '.join(absent)}; not a NeuroSTORM LightningModel checkpoint")
    checks = (("model", hp["model"] == "neurostorm", "'neurostorm' only"),
              ("in_chans", hp["in_chans"] == 1, "1 channel only (no voxel-norm channels)"),
              ("c_multiplier", hp["c_multiplier"] == 2, "2 only (each merging doubles the width)"),
              ("patch_size", len(hp["patch_size"]) == 4 and len(set(hp["patch_size"][:3])) == 1
               and hp["patch_size"][3] == 1, "cubic patches of one frame only"))
    for key, ok, allowed in checks:
        if not ok:
            raise _refuse(path, key, hp[key], allowed)
    role = "mae" if hp.get("pretraining") else "finetuned"
    if role == "mae" and not hp.get("use_mae"):
        raise _refuse(path, "use_mae", hp.get("use_mae"), "MAE pretraining only (not contrastive pretraining)")
    if role == "mae" and len(hp["depths"]) != 4:  # their decoder_pred takes embed_dim * 2^(stages - 1) / 8 inputs
        raise _refuse(path, "depths", hp["depths"], "MAEs of 4 stages only (the only depth the authors' decoder runs)")
    n_outputs = 0
    if role == "finetuned":
        task = hp.get("downstream_task_type")
        if task == "classification":
            if hp.get("clf_head_version", "v1") != "v1":
                raise _refuse(path, "clf_head_version", hp.get("clf_head_version"), "the linear head 'v1' only")
            n_outputs = 1 if hp.get("num_classes", 2) == 2 else int(hp["num_classes"])
        elif task == "regression":
            n_outputs = 1
        else:
            raise _refuse(path, "downstream_task_type", task, "'classification' or 'regression'")
    size = [int(v) for v in hp["img_size"]]
    first = hp.get("first_window_size")
    config = NeuroSTORMConfig(
        img_size=tuple(size[:3]), max_frames=size[3], patch_size=int(hp["patch_size"][0]),
        embed_dim=int(hp["embed_dim"]), depths=tuple(hp["depths"]), window_size=tuple(hp["window_size"]),
        first_window_size=tuple(first) if first is not None else None, mask_window=tuple(hp["window_size"]),
        last_stage_full=bool(hp.get("last_layer_full_MSA", False)), stage_embeddings=True, head_norm=False,
        n_outputs=n_outputs, prompt_len=int(hp.get("prompt_len", 0)) if hp.get("use_prompt_tuning") and role != "mae" else 0,
        mask_ratio=float(hp.get("mask_ratio", 0.5)), strd_rate=0.0)
    return config, role


def _block_rules(theirs: str, ours: str) -> list[tuple[str, str]]:
    """Rules for the window blocks under ``theirs`` (a pattern with two groups: layer, block)."""
    block, to = theirs + r"\.blocks\.(\d+)\.", ours + r".\1.blocks.\2."
    return [(block + r"(norm1|norm2)\.(weight|bias)", to + r"\3.\4"),
            (block + r"mlp\.linear([12])\.(weight|bias)", to + r"mlp.fc\3.\4"),
            (block + r"mamba\.(in_proj|conv1d|x_proj|dt_proj|out_proj)\.(weight|bias)", to + r"mamba.\3.\4"),
            (block + r"mamba\.(A_log|D)", to + r"mamba.\3"),
            (block + r"prompt", to + "prompt")]


def neurostorm_keymap(patch: int, role: str, legacy_mask: bool = False) -> KeyMap:
    """Every released tensor name onto ``NeuroSTORM``'s ('finetuned') or ``NeuroSTORMReleasedMAE``'s ('mae').

    ``legacy_mask``: the 2025 MAE's one ``mask_token`` of shape (window volume, C) is the window mask token.
    """
    enc = "encoder" if role == "mae" else "backbone"
    rules = [(r"model\.patch_embed\.fc\.(weight|bias)", enc + r".patch_embed.proj.\1"),
             (r"model\.pos_embeds\.0\.pos_embed", enc + ".spatial_embed"),
             (r"model\.pos_embeds\.0\.time_embed", enc + ".temporal_embed"),
             (r"model\.pos_embeds\.(\d+)\.pos_embed", enc + r".stage_spatial_embeds.\1"),
             (r"model\.pos_embeds\.(\d+)\.time_embed", enc + r".stage_temporal_embeds.\1"),
             *_block_rules(r"model\.layers\.(\d+)", enc + ".stages"),
             (r"model\.layers\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)", enc + r".merges.\1.\2.\3")]
    dropped = {r"output_head\.head\.norm\.(weight|bias)": "the LayerNorm of the 2025 cls_head_v1, which its "
                                                          "forward never calls"}
    if role == "mae":
        rules += [(r"model\.mask_token" if legacy_mask else r"model\.window_mask_token", "window_mask_token"),
                  (r"model\.first_patch_expanding\.(expand|norm)\.(weight|bias)", r"first_expand.\1.\2"),
                  *_block_rules(r"model\.layers_up\.(\d+)", "up_stages"),
                  (r"model\.layers_up\.(\d+)\.upsample\.(expand|norm)\.(weight|bias)", r"up_expands.\1.\2.\3"),
                  (r"model\.norm_up\.(weight|bias)", r"norm_up.\1"), (r"model\.decoder_pred\.(weight|bias)", r"pred.\1")]
        dropped[r"model\.(atlas_mask_token|atlas_map)" if legacy_mask else r"model\.(mask_token|atlas_mask_token|atlas_map)"] = MASKING
    else:
        rules.append((r"output_head\.head\.head\.(weight|bias)", r"head.1.\1"))
    return KeyMap(
        rules=tuple(rules), dropped=dropped,
        # a Linear over a flattened (x, y, z) patch is a convolution with that kernel; their
        # embeddings are channels-first (1, C, d, h, w, t), fmriflow's channels-last
        converted={r"model\.patch_embed\.fc\.weight": lambda t: t.reshape(t.shape[0], 1, patch, patch, patch),
                   r"model\.pos_embeds\.\d+\.(pos|time)_embed": lambda t: t.movedim(1, -1)},
    )


def neurostorm_parts(path: Path) -> dict[str, Any]:
    """What ``imports.import_checkpoint`` needs of a NeuroSTORM checkpoint."""
    from ..models.neurostorm import NeuroSTORM
    from ..models.neurostorm_release import NeuroSTORMReleasedMAE

    checkpoint = read_lightning_checkpoint(path)
    hp = checkpoint["hyper_parameters"]
    released = dict(checkpoint["state_dict"])
    config, role = neurostorm_settings(hp, path)
    model = NeuroSTORMReleasedMAE(config) if role == "mae" else NeuroSTORM(config)
    legacy_mask = "model.window_mask_token" not in released
    skipped = {k: "training state" for k in checkpoint if k not in ("state_dict", "hyper_parameters")}
    return {"model": model, "keymap": neurostorm_keymap(config.patch_size, role, legacy_mask),
            "released": released, "weights": path,
            "recipe": neurostorm_recipe(hp, [*config.img_size, config.max_frames], config.patch_size),
            "inputs": [path], "release": NEUROSTORM_SOURCE,
            "source": {"role": role, "imported_entry": "state_dict", "not_imported": skipped,
                       "masking": {k: hp.get(k) for k in ("spatial_mask", "time_mask", "mask_ratio")} if role == "mae"
                       else None},
            "embedding": "the mean of the last stage's tokens over space and time (the pooling of the authors' "
                         "heads), no masking" + ("" if role == "mae" else "; the bundle keeps their task head"),
            "settings": {k: v for k, v in hp.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
            "atlas": {"name": "none (voxel input)", "sha256": None, "labels_sha256": None, "n_regions": 0,
                      "regions": [], "coordinates": None, "coordinate_space": None,
                      "grid": {"space": "MNI152 (the dataset's own MNI152 template)", "voxel_mm": 2,
                               "shape": list(config.img_size), "frames": config.max_frames}}}
