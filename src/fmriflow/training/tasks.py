"""The training tasks of ``fmriflow.train`` (``build_task``): each supplies the model, the train and
validation datasets, the loss of a batch and how much masking noise a batch needs.

- ``brainlm``: the region-level masked autoencoder, pretrained on a region dataset.
- ``brainsymphony``: BrainSymphony's masked reconstruction of region windows and/or structural
  connectomes (``fmriflow.training.symphony``).
- ``neurostorm-mae``: masked reconstruction on windows of a voxel dataset (no labels).
- ``brainmt``: BrainMT trained end to end on a participants.tsv column.
- ``neurostorm``: the encoder of a ``neurostorm-mae`` run (``init_from``) loaded and frozen;
  only the prompt tokens and the head are trained, on a participants.tsv column.
- ``vq-align``, ``lm-finetune``: fMRI tokens aligned with text, and a language model reading
  them (``fmriflow.training.text_tasks``).

Targets: ``classification`` maps the column's values (as text, sorted) to class indices
and trains with cross-entropy; ``regression`` standardises the column with the mean and
standard deviation of the training subjects and trains with MSE. Either way model.pt records
what is needed to read the outputs back (``classes`` or ``target_mean`` / ``target_std``).
The model is built for the dataset's grid (its ``img_size`` is the card's shape).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.participants import subject_labels
from ..datasets.voxels import VoxelWindowDataset, load_card, voxel_splits
from ..errors import InputError
from .config import Task, TrainConfig


def build_task(cfg: TrainConfig) -> Task:
    """The model, data and loss of ``cfg.task``."""
    if cfg.task == "brainlm":
        return _brainlm_task(cfg)
    if cfg.task == "brainsymphony":
        from .symphony import brainsymphony_task

        return brainsymphony_task(cfg)
    if cfg.task in ("vq-align", "lm-finetune"):
        from . import text_tasks

        return text_tasks.vq_align_task(cfg) if cfg.task == "vq-align" else text_tasks.lm_finetune_task(cfg)
    return build_voxel_task(cfg)


def _brainlm_task(cfg: TrainConfig) -> Task:
    from ..datasets.regions import RegionWindowDataset
    from ..io import read_tsv
    from ..models.brainlm import create_model

    if not cfg.coords:
        raise ValueError("task brainlm needs --coords (the atlas look-up TSV with x, y, z)")
    lut = read_tsv(cfg.coords)
    model = create_model(cfg.model, torch.tensor(lut[["x", "y", "z"]].to_numpy(dtype=np.float32)))
    info = {}
    if cfg.init_from:  # continued pretraining: after the seeded random build, so a resumed run builds the same
        from ..bundle.parent import init_from_bundle

        info["parent"] = init_from_bundle(model, cfg.init_from, cfg.atlas, cfg.coords)
    return Task(
        model=model,
        train_set=RegionWindowDataset(cfg.dataset, "train"),
        val_set=RegionWindowDataset(cfg.dataset, "val"),
        loss=lambda m, batch, noise: m(batch["x"], noise=noise).loss,
        n_noise=lambda x: model.n_tokens(x.shape[1], x.shape[2]),
        info=info,
    )


def build_voxel_task(cfg: TrainConfig) -> Task:
    shape = tuple(load_card(cfg.dataset)["shape"])
    if cfg.task == "neurostorm-mae":
        from ..models.neurostorm_mae import create_neurostorm_mae

        model = create_neurostorm_mae(cfg.model, img_size=shape, checkpoint=cfg.grad_checkpoint)
        window = _window(cfg, model.config.max_frames)
        return Task(
            model=model,
            train_set=VoxelWindowDataset(cfg.dataset, "train", window=window, stride=cfg.stride or window),
            val_set=VoxelWindowDataset(cfg.dataset, "val", window=window, stride=cfg.stride or window),
            loss=lambda m, batch, noise: m(batch["x"], noise=noise).loss,
            n_noise=lambda x: model.n_noise(x.shape[1]),
            info={"window": window},
        )
    labels, n_outputs, target_info = _targets(cfg)
    if cfg.task == "brainmt":
        from ..models.brainmt import create_brainmt

        model = create_brainmt(cfg.model, img_size=shape, n_outputs=n_outputs, checkpoint=cfg.grad_checkpoint)
    else:
        from ..models.neurostorm import create_neurostorm, freeze_for_prompt_tuning, load_pretrained_backbone

        model = create_neurostorm(cfg.model, img_size=shape, n_outputs=n_outputs, prompt_len=cfg.prompt_len,
                                  checkpoint=cfg.grad_checkpoint)
        if cfg.init_from:
            state = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
            if state.get("task") != "neurostorm-mae":
                raise InputError(cfg.init_from, f"not a neurostorm-mae model (task {state.get('task')!r})")
            pretrained = {k: v for k, v in state["model_config"].items() if k in ("embed_dim", "depths", "patch_size")}
            ours = {k: v for k, v in dataclasses.asdict(model.config).items() if k in pretrained}
            if {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained.items()} != ours:
                raise InputError(cfg.init_from, f"pretrained with {pretrained}, but --model {cfg.model} has {ours}")
            load_pretrained_backbone(model, state["model"])
        freeze_for_prompt_tuning(model)
    window = _window(cfg, model.config.max_frames)
    kind = cfg.target_kind

    def loss(m, batch, noise):
        out = m(batch["x"]).float()  # (B, n_outputs)
        if kind == "classification":
            return F.cross_entropy(out, batch["y"].long())
        return F.mse_loss(out[:, 0], batch["y"].float())

    sets = {split: VoxelWindowDataset(cfg.dataset, split, window=window, stride=cfg.stride or window, labels=labels)
            for split in ("train", "val")}
    return Task(model=model, train_set=sets["train"], val_set=sets["val"], loss=loss, n_noise=lambda x: 0,
                info={"window": window, "target": cfg.target, "target_kind": kind, **target_info})


def _window(cfg: TrainConfig, max_frames: int) -> int:
    window = cfg.window or max_frames
    if window > max_frames:
        raise ValueError(f"--window {window} is longer than the model's max_frames={max_frames}")
    return window


def _targets(cfg: TrainConfig) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Subject -> training target, the number of model outputs, and what model.pt records about them."""
    if not cfg.participants or not cfg.target:
        raise ValueError(f"task {cfg.task} needs --participants and --target (a participants.tsv column)")
    from ..datasets.participants import TargetEncoding

    column = subject_labels(cfg.participants, cfg.target)
    if cfg.target_kind == "classification":
        encoding = TargetEncoding.fit("classification", column)
        classes = list(encoding.classes)
        if len(classes) < 2:
            raise InputError(cfg.participants, f"column '{cfg.target}' has {len(classes)} class(es); classification needs 2")
        return dict(zip(column.index, encoding.encode(column).tolist())), len(classes), {"classes": classes}
    try:
        values = column.astype(float)
    except ValueError as exc:
        raise InputError(cfg.participants, f"column '{cfg.target}' is not numeric ({exc}); use classification") from exc
    splits = voxel_splits(cfg.dataset)
    train = values.loc[[s for s in splits.loc[splits["split"] == "train", "subject"] if s in values.index]]
    # pandas' statistics skip a NaN label (np.mean in TargetEncoding.fit would not): kept as they were
    mean, std = float(train.mean()), float(train.std(ddof=0))
    encoding = TargetEncoding("regression", mean=mean, std=std if std > 0 else 1.0)
    return (dict(zip(values.index, encoding.encode(values).tolist())), 1,
            {"target_mean": encoding.mean, "target_std": encoding.std})


__all__ = ["build_task", "build_voxel_task"]
