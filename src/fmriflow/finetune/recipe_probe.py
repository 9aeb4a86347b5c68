"""Frozen embeddings of a released model's recipe windows, and their probe rows.

``embed_step`` runs an imported bundle's encoder (``bundle.read.load_bundle_encoder``, frozen, its
card's pooling: ``encode``) on every window its recipe step prepared (``bundle.recipe_step``) and
writes ``embeddings.npy`` (windows x features, float32) and ``windows.tsv`` (sample, subject).

``load_recipe_embeddings`` gives the fine-tuning's probe rows ``probe_<name>``: each subject's
embedding is the float64 mean of its windows' (as ``probe``'s), fitted and scored by the frozen
probe on the FC baselines' folds, each with a label-permuted control (``crossval``). A subject the
recipe gave no window is left out of that row.
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


@torch.no_grad()
def embed_windows(model, windows: np.ndarray, batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """Pooled embeddings of ``windows`` (N, ...) in the model's input layout: (N, D) float32."""
    out, model = [], model.to(device)
    for start in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size], dtype=np.float32))
        out.append(model.encode(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def embed_step(bundle: str, prepared: str, out_dir: str, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """Embed every prepared window with the bundle's encoder; write the two files above with sidecars."""
    from ..bundle.read import load_bundle_encoder
    from ..bundle.recipe_step import INDEX, WINDOWS as PREPARED

    model = load_bundle_encoder(bundle, pretrained=True, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    index = read_tsv(Path(prepared) / INDEX, dtype={"subject": str, "run": str})
    embeddings = embed_windows(model, np.load(Path(prepared) / PREPARED, mmap_mode="r"), device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / EMBEDDINGS) as tmp:
        with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
            np.save(fh, embeddings)
    write_tsv(out / WINDOWS, index[["sample", "subject"]])
    inputs = [*(str(Path(bundle) / f) for f in ("model.safetensors", "config.json", "model_card.json")),
              str(Path(prepared) / PREPARED), str(Path(prepared) / INDEX)]
    parameters = {"embedding": "frozen encoder, its card's pooling (encode), no masking", "seed": seed}
    for name in (EMBEDDINGS, WINDOWS):
        write_sidecar(out / name, "recipe_embed", inputs, parameters=parameters)
    return embeddings


def load_recipe_embeddings(dirs: Mapping[str, str | Path], subjects) -> dict[str, dict[str, np.ndarray]]:
    """Probe row ``probe_<name>`` -> subject (of ``subjects``) -> float64 mean of its windows' embeddings."""
    out = {}
    for name, folder in dirs.items():
        array = np.load(Path(folder) / EMBEDDINGS)
        table = read_tsv(Path(folder) / WINDOWS, dtype={"subject": str})
        keep = table[table["subject"].isin(set(subjects))]
        out[PREFIX + name] = {s: np.asarray(array[g.index.to_numpy()], dtype=np.float64).mean(axis=0)
                              for s, g in keep.groupby("subject", sort=True)}
    return out

