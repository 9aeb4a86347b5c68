"""A released model's recipe embeddings as the time-series branch of the FMMTC variants.

The fused variants train on windows: each dataset window's FC (the ResNet-18 branch) beside a
time-series embedding of the same stretch of scan. A recipe cuts its own windows (the card's TR and
length), so ``aligned`` gives each dataset window the overlap-weighted mean of the embeddings of the
recipe windows of the same run that overlap it in time (weights: seconds shared). Where no recipe
window of the run overlaps it (a run's tail that the recipe's stride leaves out), the recipe window
nearest in time (centre to centre) stands in; a run the recipe gave no window (too short for it)
leaves its dataset windows out of the recipe's variants, and a subject with none of its windows left
out of those rows (as its probe row does).

The variants (``finetune.recipe_variants``, rows ``<variant>_<name>``) are then the FMMTC variants of
``fmriflow.finetune.trainer`` on these features, on the same folds, seeds and inner splits as the
variants on this project's encoder; ``no_pretrain_<name>`` is concat on the random-encoder control's
embeddings (``probe_random_<name>``'s), aligned the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from .recipe_probe import read_embeddings

VARIANTS = ("concat", "sum", "cross_attention", "moe", "ts_only", "no_pretrain")  # finetune.recipe_variants


@dataclass(frozen=True)
class RecipeFeatures:
    """One recipe's time-series branch on the fine-tuning's feature rows (rows of ``Inputs.fc``)."""

    ts: dict[str, np.ndarray]  # 'pretrained' / 'random' -> (rows, D) float32; 0 where not ``valid``
    valid: np.ndarray  # (rows,) bool: the window's run has recipe windows


def row_name(variant: str, name: str) -> str:
    return f"{variant}_{name}"


def aligned(dataset_windows: pd.DataFrame, embeddings: np.ndarray,
            windows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Recipe embeddings (rows of ``windows``: run, onset, duration) on the ``dataset_windows`` (run, onset,
    duration, in their order): ((N, D) float32, (N,) bool valid)."""
    out = np.zeros((len(dataset_windows), embeddings.shape[1]), np.float32)
    valid = np.zeros(len(dataset_windows), bool)
    groups = {run: g for run, g in windows.groupby("run", sort=False)}
    for run, ours in dataset_windows.reset_index(drop=True).groupby("run", sort=False):
        theirs = groups.get(run)
        if theirs is None:
            continue
        start, end = theirs["onset"].to_numpy(float), (theirs["onset"] + theirs["duration"]).to_numpy(float)
        a = ours["onset"].to_numpy(float)[:, None]
        b = a + ours["duration"].to_numpy(float)[:, None]
        shared = np.clip(np.minimum(b, end) - np.maximum(a, start), 0.0, None)  # (ours, theirs) seconds
        nearest = np.abs((a + b) / 2 - (start + end) / 2).argmin(axis=1)
        none = shared.sum(axis=1) == 0
        shared[none, nearest[none]] = 1.0
        weights = shared / shared.sum(axis=1, keepdims=True)
        out[ours.index] = (weights @ embeddings[theirs.index].astype(np.float64)).astype(np.float32)
        valid[ours.index] = True
    return out, valid


def load_recipe_features(dirs: Mapping[str, Mapping[str, str | Path]], index: pd.DataFrame, samples: np.ndarray,
                         window: int) -> dict[str, RecipeFeatures]:
    """Each recipe's features on the fine-tuning's rows. ``dirs``: name -> encoder -> embeddings' folder
    (``recipe_probe``); ``index``: the dataset's ``index.tsv``; ``samples``: the dataset sample of each
    feature row; ``window``: the dataset's window length in time points."""
    by_sample = index.set_index("sample").loc[samples]
    tr = by_sample["tr"].to_numpy(float)
    ours = pd.DataFrame({"run": by_sample["run"].astype(str).to_numpy(),
                         "onset": by_sample["start_tr"].to_numpy(float) * tr, "duration": window * tr})
    out = {}
    for name, folders in dirs.items():
        ts, valid, keys = {}, None, {}
        for encoder in ("pretrained", "random"):
            embeddings, windows = read_embeddings(folders[encoder])
            keys[encoder] = windows[["run", "onset", "duration"]].reset_index(drop=True)
            ts[encoder], valid = aligned(ours, embeddings, windows)
        # one validity for both encoders, and no_pretrain beside concat, hold only on the same windows
        if not keys["pretrained"].equals(keys["random"]):
            raise InputError(folders["pretrained"], f"lists other windows (run, onset, duration) than "
                             f"{folders['random']} ({len(keys['pretrained'])} vs {len(keys['random'])} rows): "
                             f"rerun recipe_embed and recipe_embed_random")
        out[name] = RecipeFeatures(ts, valid)
    return out
