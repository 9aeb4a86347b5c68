"""The ``brainsymphony`` pretraining task: BrainSymphony's masked reconstruction of region windows
and/or structural connectomes (``--modalities both | fmri | sc``).

The time series come from a region dataset (``fmriflow.datasets.regions``); the connectomes from
``--sc-dir``, one TSV per subject (``sub-<label>_*.tsv``: region names as the header, the
transformed matrix below, as ``fmriflow.sc.connectome.write_connectome`` writes it). Every sample
of a subject carries that subject's connectome. With ``both`` or ``sc`` the windows of subjects
without one are left out of pretraining (the log says whose): they take the fMRI-only path where
the model is used (``fmriflow.finetune.symphony``), which the same modules serve.
The model is built for the dataset's regions and window (``window`` of the named config replaced).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import read_json, read_tsv
from .config import Task, TrainConfig

SC_PATTERN = "sub-*.tsv"
log = logging.getLogger(__name__)


def sc_files(cfg: TrainConfig) -> list[Path]:
    """The connectome files of ``--sc-dir`` (sorted); none when the run uses no connectomes."""
    if cfg.task != "brainsymphony" or cfg.modalities == "fmri":
        return []
    if not cfg.sc_dir or not Path(cfg.sc_dir).is_dir():
        raise InputError(cfg.sc_dir or None, f"task brainsymphony with --modalities {cfg.modalities} needs "
                         "--sc-dir, a folder of per-subject connectome TSVs", settings=("sc_dir",))
    return sorted(Path(cfg.sc_dir).glob(SC_PATTERN))


def load_connectomes(cfg: TrainConfig, subjects: list[str], region_names: list[str],
                     allow_missing: bool = False) -> dict[str, np.ndarray]:
    """Subject -> float32 (R, R) connectome, each checked against the dataset's regions.

    ``allow_missing``: subjects without a connectome are left out of the result (else an error);
    none at all is always an error."""
    from ..sc.connectome import check_connectome, find_connectomes

    sc_files(cfg)  # the error when --sc-dir is missing
    found, missing = find_connectomes(cfg.sc_dir, subjects, pattern=SC_PATTERN, suffixes=(".tsv",))
    if missing and (not allow_missing or not found):
        raise InputError(cfg.sc_dir, f"no connectome for subject(s) {missing} of the dataset; run them with "
                         "--modalities fmri (the unimodal path)", settings=("sc_dir", "modalities"))
    if missing:
        log.warning("no connectome for subject(s) %s: their windows take no part in %s pretraining", missing,
                    cfg.modalities)
    out = {}
    for subject in found:
        table = read_tsv(found[subject])
        if list(table.columns) != list(region_names):
            raise InputError(found[subject], f"regions {list(table.columns)[:4]}... are not the dataset's "
                             f"{list(region_names)[:4]}... ({len(table.columns)} vs {len(region_names)})")
        matrix = table.to_numpy(dtype=np.float64)
        check_connectome(matrix, found[subject], n_regions=len(region_names), counts=False)
        out[subject] = matrix.astype(np.float32)
    return out


class WithConnectomes(torch.utils.data.Dataset):
    """The windows of a region-window dataset whose subject has a connectome, each sample also
    holding that connectome (``sc``)."""

    def __init__(self, windows, connectomes: dict[str, np.ndarray]):
        self.windows = windows
        subjects = windows.index["subject"].astype(str).tolist()
        self.rows = [i for i, s in enumerate(subjects) if s in connectomes]
        self.subjects = [subjects[i] for i in self.rows]
        self.connectomes = {s: torch.from_numpy(m) for s, m in connectomes.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.windows[self.rows[i]], "sc": self.connectomes[self.subjects[i]]}


def brainsymphony_task(cfg: TrainConfig) -> Task:
    from ..datasets.regions import RegionWindowDataset
    from ..models.brainsymphony import create_brainsymphony

    card = read_json(Path(cfg.dataset) / "dataset_card.json")
    _, n_regions, window = card["shapes"]["samples"]
    model = create_brainsymphony(cfg.model, int(n_regions), window=int(window), modalities=cfg.modalities)
    sets = {split: RegionWindowDataset(cfg.dataset, split) for split in ("train", "val")}
    if cfg.modalities != "fmri":
        regions = _region_names(cfg, int(n_regions))
        subjects = sorted({s for d in sets.values() for s in d.index["subject"].astype(str)})
        connectomes = load_connectomes(cfg, subjects, regions, allow_missing=True)
        sets = {split: WithConnectomes(d, connectomes) for split, d in sets.items()}
        empty = [split for split, d in sets.items() if not len(d)]
        if empty:
            raise InputError(cfg.sc_dir, f"no subject of the {empty} split has a connectome: {cfg.modalities} "
                             "pretraining has no window there", settings=("sc_dir", "modalities"))
    return Task(
        model=model,
        train_set=sets["train"],
        val_set=sets["val"],
        loss=lambda m, batch, noise: m(batch["x"], batch.get("sc"), noise=noise).loss,
        n_noise=lambda x: model.n_noise(x.shape[2]),
        info={"modalities": cfg.modalities, "n_regions": int(n_regions), "window": int(window)},
    )


def _region_names(cfg: TrainConfig, n_regions: int) -> list[str]:
    """The dataset's region order: the names in its scaling table."""
    names = read_tsv(Path(cfg.dataset) / "scaling.tsv")["region"].astype(str).tolist()
    if len(names) != n_regions:
        raise InputError(Path(cfg.dataset) / "scaling.tsv", f"{len(names)} regions; the samples have {n_regions}")
    return names
