"""Checkpoints: what a run learns from (``run_inputs``), whether a checkpoint belongs to this run
(``_resumable``), resuming from one (``load_checkpoint``), writing one (``save_checkpoint``) and the
final model (``save_model``), each atomically (``_save``), with the Python, NumPy, torch and CUDA RNG states."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..io import atomic_path
from .config import NOT_SHAPING, TrainConfig
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"


def run_inputs(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the files a run learns from: the dataset card (which lists its inputs' sha256,
    splits and scaling), the coordinates, the participants table, the initial model and the connectomes."""
    from ..io import sha256sum

    from .symphony import sc_files

    files = {"dataset_card": str(Path(cfg.dataset) / "dataset_card.json"), "coords": cfg.coords,
             "participants": cfg.participants}
    files.update({f"init_from:{Path(p).name}" if Path(cfg.init_from).is_dir() else "init_from": str(p)
                  for p in init_files(cfg)})
    files.update({f"sc:{path.name}": str(path) for path in sc_files(cfg)})
    return {key: sha256sum(path) for key, path in files.items() if path and Path(path).is_file()}


def init_files(cfg: TrainConfig) -> list[str]:
    """The initial model's files: a bundle folder's three files (brainlm), or the one model.pt (neurostorm)."""
    if not cfg.init_from:
        return []
    if Path(cfg.init_from).is_dir():
        from ..bundle.parent import bundle_files

        return [str(p) for p in bundle_files(cfg.init_from)]
    return [cfg.init_from]


def load_checkpoint(path: Path, cfg: TrainConfig, inputs: dict[str, str], ddp: Dist, model, optimizer,
                    scheduler) -> int:
    """Restore model, optimiser, scheduler and RNG states from ``path`` if it belongs to this run
    (``_resumable``); the step to continue from (0: start over)."""
    state = _resumable(path, cfg, inputs, ddp)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng(state["rng"])
    return state["step"]
def _resumable(path: Path, cfg: TrainConfig, inputs: dict[str, str], ddp: Dist) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this run, else None.

    A rerun after a time limit continues from it. A rerun because the data or a setting that
    shapes training changed (Snakemake reruns the job on new inputs or params) must not: it
    would start at the old run's step, possibly its last, and write the old model as the new
    one. Such a checkpoint is set aside as ``checkpoint.pt.stale`` and training starts over.
    """
    if not path.exists():
        return None
    state = torch.load(path, map_location=ddp.device, weights_only=False)
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SHAPING}
    then = {k: v for k, v in state.get("config", {}).items() if k not in NOT_SHAPING}
    if isinstance(then.get("betas"), list):
        then["betas"] = tuple(then["betas"])
    # a setting added by a later fmriflow is absent from older checkpoints: at its default it
    # changes nothing, and a run in flight on the cluster must not start over after an upgrade
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k)
                     and not (k not in then and k in defaults and now[k] == defaults[k]))
    if state.get("inputs") != inputs:
        changed.append("inputs (" + ", ".join(sorted(k for k in inputs.keys() | state.get("inputs", {}).keys()
                                                      if inputs.get(k) != state.get("inputs", {}).get(k))) + ")")
    if not changed:
        return state
    if ddp.world > 1:
        dist.barrier()  # every rank has read it before rank 0 moves it
    if ddp.master:
        os.replace(path, path.with_name(path.name + ".stale"))
        print(f"fmriflow-train: {path} was made with other {', '.join(changed)}; training starts over "
              f"(the old checkpoint is kept as {path.name}.stale)", file=sys.stderr)
    return None


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, cfg: TrainConfig, ddp: Dist,
                    inputs: dict[str, str] | None = None) -> None:
    """Rank 0 writes model, optimiser, scheduler, step, RNG states, the config and the inputs'
    sha256 (``run_inputs``) atomically."""
    if ddp.master:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "step": step, "rng": _get_rng(), "config": dataclasses.asdict(cfg), "inputs": inputs or {}}
        _save(state, path)
    if ddp.world > 1:
        dist.barrier()


def save_model(path: Path, model, cfg: TrainConfig, info: dict[str, Any]) -> None:
    """The trained model's state dict, config and model config, and ``info`` (task entries), atomically."""
    _save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
           "model_config": dataclasses.asdict(model.config), **info}, path)


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically: a failed write (full disk) leaves the previous file as it was."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        try:
            # to a file object: given a path, torch names the archive inside after the file,
            # and the temporary's random name would make every checkpoint's bytes differ
            torch.save(obj, fh)
        except RuntimeError as exc:  # torch reports a failed write as "iostream error"
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"{path}: writing failed ({exc}); {free} bytes free on its file system") from exc


def _get_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

