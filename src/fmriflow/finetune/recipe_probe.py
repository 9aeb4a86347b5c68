"""Frozen embeddings of a released model's recipe windows, and their probe rows.

``embed_step`` runs an imported bundle's encoder (``bundle.read.load_bundle_encoder``, frozen, its
card's pooling: ``encode``) on every window its recipe step prepared (``bundle.recipe_step``) and
writes ``embeddings.npy`` (windows x features, float32) and ``windows.tsv`` (sample, subject, run,
onset and duration in seconds from the start of the run's denoised series, the dataset windows' clock:
where the window lies in its run, for the fused variants' pairing with the dataset's windows,
``recipe_fusion``; the voxel recipe adds onset_raw and duration_raw, from the preprocessed BOLD's volume 0). With ``pretrained=False`` it runs the
same architecture randomly initialised (seeded ``finetune.seed``): the control that shows what the
released weights add. The pretrained embeddings do not depend on any seed (the weights are the
bundle's, nothing is masked or dropped), so that job takes none and a new seed does not rerun it.

``load_recipe_embeddings`` gives the fine-tuning's probe rows ``probe_<name>`` and their random-encoder
controls ``probe_random_<name>``: each subject's embedding is the float64 mean of its windows' (as
``probe``'s), fitted and scored by the frozen probe on the FC baselines' folds, each with a
label-permuted control (``crossval``). A subject the recipe gave no window is left out of those rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..io import atomic_path, read_tsv, write_tsv
from ..naming import RECIPE_EMBEDDED
from ..provenance import write_sidecar

EMBEDDINGS, WINDOWS = RECIPE_EMBEDDED
PREFIX = "probe_"
RANDOM_PREFIX = "probe_random_"  # the random-encoder control of probe_<name> (recipe names hold no '_')
ENCODERS = ("pretrained", "random")


@torch.no_grad()
def embed_windows(model, windows: np.ndarray, batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """Pooled embeddings of ``windows`` (N, ...) in the model's input layout: (N, D) float32."""
    out, model = [], model.to(device)
    for start in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size], dtype=np.float32))
        out.append(model.encode(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def window_times(index, recipe: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Onset and duration (s) of each prepared window (``index.tsv`` rows: ``start`` frames at ``tr``), from
    ``recipe.json``'s window as applied (``frame_step``: frames taken every so many, NeuroSTORM's). The voxel
    recipe's index holds them already, mapped onto the denoised series' clock (``recipe_step``)."""
    if {"onset", "duration"} <= set(index.columns):
        return index["onset"].to_numpy(dtype=np.float64), index["duration"].to_numpy(dtype=np.float64)
    applied = recipe["applied"]
    span = (int(applied["window"]) - 1) * int(applied.get("frame_step") or 1) + 1  # frames a window covers
    tr = index["tr"].to_numpy(dtype=np.float64)
    return index["start"].to_numpy(dtype=np.float64) * tr, span * tr


def embed_step(bundle: str, prepared: str, out_dir: str, pretrained: bool = True, seed: int = 0,
               device: str = "cpu") -> np.ndarray:
    """Embed every prepared window with the bundle's encoder (``pretrained``) or a random one of its
    architecture (``seed``, only then used); write the two files above with sidecars."""
    from ..bundle.read import load_bundle_encoder
    from ..bundle.recipe_step import INDEX, RECIPE, WINDOWS as PREPARED
    from ..io import read_json

    model = load_bundle_encoder(bundle, pretrained=pretrained, seed=seed if not pretrained else 0)
    for p in model.parameters():
        p.requires_grad_(False)
    index = read_tsv(Path(prepared) / INDEX, dtype={"subject": str, "run": str})
    onset, duration = window_times(index, read_json(Path(prepared) / RECIPE))
    embeddings = embed_windows(model, np.load(Path(prepared) / PREPARED, mmap_mode="r"), device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / EMBEDDINGS) as tmp:
        with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
            np.save(fh, embeddings)
    raw = [c for c in ("onset_raw", "duration_raw") if c in index.columns]  # the voxel recipe's, for the record
    write_tsv(out / WINDOWS, index[["sample", "subject", "run"]].assign(onset=onset, duration=duration)
              .join(index[raw]))
    inputs = [*(str(Path(bundle) / f) for f in ("model.safetensors", "config.json", "model_card.json")),
              str(Path(prepared) / PREPARED), str(Path(prepared) / INDEX), str(Path(prepared) / RECIPE)]
    parameters = {"embedding": "frozen encoder, its card's pooling (encode), no masking",
                  "encoder": "the bundle's weights" if pretrained else "its architecture, randomly initialised",
                  **({} if pretrained else {"seed": seed})}
    for name in (EMBEDDINGS, WINDOWS):
        write_sidecar(out / name, "recipe_embed", inputs, parameters=parameters)
    return embeddings


def load_recipe_embeddings(dirs: Mapping[str, Mapping[str, str | Path]],
                           subjects) -> dict[str, dict[str, np.ndarray]]:
    """Probe rows ``probe_<name>`` and ``probe_random_<name>`` -> subject (of ``subjects``) -> float64 mean of
    its windows' embeddings. ``dirs``: name -> encoder ('pretrained', 'random') -> its embeddings' folder."""
    out = {}
    for name, folders in dirs.items():
        for encoder, prefix in (("pretrained", PREFIX), ("random", RANDOM_PREFIX)):
            array, table = read_embeddings(folders[encoder])
            keep = table[table["subject"].isin(set(subjects))]
            out[prefix + name] = {s: np.asarray(array[g.index.to_numpy()], dtype=np.float64).mean(axis=0)
                                  for s, g in keep.groupby("subject", sort=True)}
    return out


def read_embeddings(folder: str | Path):
    """``embeddings.npy`` and ``windows.tsv`` of one embedding step's folder, one row each per window."""
    from ..errors import InputError

    array = np.load(Path(folder) / EMBEDDINGS)
    table = read_tsv(Path(folder) / WINDOWS, dtype={"subject": str, "run": str})
    lacking = [c for c in ("subject", "run", "onset", "duration") if c not in table.columns]
    if lacking:  # written before the windows were timed
        raise InputError(Path(folder) / WINDOWS, f"lacks the column(s) {lacking}; it has {list(table.columns)}: "
                                                 "rerun recipe_embed")
    if len(array) != len(table):
        raise InputError(Path(folder) / WINDOWS, f"{len(table)} windows but {Path(folder) / EMBEDDINGS} holds "
                                                 f"{len(array)} embeddings: rerun recipe_embed")
    return array, table

