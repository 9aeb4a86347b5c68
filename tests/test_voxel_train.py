"""fmriflow.train on the voxel tasks at toy size: exact resumption of NeuroSTORM pretraining, prompt
tuning that keeps the pretrained encoder bitwise, and the targets recorded with the model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_voxel_dataset import write_run

from fmriflow.datasets.regions import make_splits
from fmriflow.errors import InputError
from fmriflow.training.config import TrainConfig
from fmriflow.training.loop import train
from fmriflow.datasets.voxels import build_voxel_dataset
from fmriflow.provenance import sidecar_path

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SUBJECTS = ["01", "02", "03", "04", "05", "06"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("voxel_train")
    runs = [write_run(root, s, 8, seed) for seed, s in enumerate(SUBJECTS)]
    splits = make_splits(SUBJECTS, fractions=(4 / 6, 1 / 6, 1 / 6), seed=0)
    build_voxel_dataset(runs, splits, root / "ds", shape=(24, 24, 24), dtype="float32")
    participants = root / "participants.tsv"
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS], "age": [31, 44, 27, 60, 52, 38],
                  "group": ["a", "b", "a", "b", "a", "b"]}).to_csv(participants, sep="\t", index=False)
    return root, splits


def cfg(data, out, **overrides) -> TrainConfig:
    root, _ = data
    base = dict(dataset=str(root / "ds"), out=str(out), task="neurostorm-mae", model="tiny", window=4, stride=2,
                batch_size=2, max_steps=4, warmup_steps=1, checkpoint_every=100, eval_every=2, log_every=1,
                num_workers=0, lr=1e-2, participants=str(root / "participants.tsv"))
    return TrainConfig(**{**base, **overrides})


def saved(out) -> dict:
    return torch.load(out / "model.pt", weights_only=False)


def test_pretraining_resumes_exactly(data, tmp_path):
    train(cfg(data, tmp_path / "straight"))
    assert train(cfg(data, tmp_path / "split"), should_stop=lambda step: step == 2) == {"step": 2, "interrupted": True}
    train(cfg(data, tmp_path / "split"))
    logs = [pd.read_csv(tmp_path / name / "train_log.csv").dropna(subset=["train_loss"]) for name in ("straight", "split")]
    np.testing.assert_array_equal(logs[0]["train_loss"], logs[1]["train_loss"])
    straight, split = saved(tmp_path / "straight"), saved(tmp_path / "split")
    for key, value in straight["model"].items():
        assert torch.equal(split["model"][key], value), key
    assert straight["task"] == "neurostorm-mae" and straight["mamba_backend"] == "reference"


def test_prompt_tuning_keeps_the_pretrained_encoder(data, tmp_path):
    train(cfg(data, tmp_path / "mae", max_steps=2))
    train(cfg(data, tmp_path / "tuned", task="neurostorm", target="group", init_from=str(tmp_path / "mae" / "model.pt"),
              prompt_len=2, max_steps=3))
    encoder, tuned = saved(tmp_path / "mae")["model"], saved(tmp_path / "tuned")
    backbone = {k: v for k, v in tuned["model"].items() if k.startswith("backbone.")}
    prompts = [k for k in backbone if k.endswith(".prompt")]
    assert prompts and tuned["classes"] == ["a", "b"]
    for key, value in backbone.items():
        if key not in prompts:
            assert torch.equal(value, encoder["encoder." + key.removeprefix("backbone.")]), key


def test_regression_target_is_standardised_on_training_subjects(data, tmp_path):
    _, splits = data
    train(cfg(data, tmp_path / "bmt", task="brainmt", target="age", target_kind="regression", max_steps=1,
              window=4))
    state = saved(tmp_path / "bmt")
    ages = dict(zip(SUBJECTS, [31, 44, 27, 60, 52, 38]))
    train_ages = [ages[s] for s in splits.loc[splits["split"] == "train", "subject"]]
    assert state["target_mean"] == pytest.approx(np.mean(train_ages))
    assert state["target_std"] == pytest.approx(np.std(train_ages))
    assert state["model_config"]["img_size"] == (24, 24, 24) and state["model_config"]["n_outputs"] == 1


def test_finetuning_sidecars_name_the_finetuning_step(data, tmp_path):
    train(cfg(data, tmp_path / "bmt", task="brainmt", target="group", max_steps=1))
    for artefact in ("model.pt", "metrics.csv"):
        sidecar = json.loads(sidecar_path(tmp_path / "bmt" / artefact).read_text())
        assert sidecar["Provenance"]["Step"] == "voxel_finetune", artefact


def test_impossible_batch_size_names_the_voxel_setting(data, tmp_path):
    with pytest.raises(InputError, match=r"--batch-size \(config voxel.brainmt.batch_size\) must be between 1 and "
                                         r"the \d+ training samples .*; 1000 was provided"):
        train(cfg(data, tmp_path / "bmt", task="brainmt", target="group", batch_size=1000))
