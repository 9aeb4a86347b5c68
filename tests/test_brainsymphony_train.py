"""The brainsymphony pretraining task in the shared loop (CPU): time series + connectomes, the loss
falls, resuming is exact, the unimodal paths run, and subjects without a connectome are left out of
multimodal pretraining (none at all, or a split without any, is named)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.datasets.regions import build_dataset, make_splits
from fmriflow.errors import InputError
from fmriflow.sc.connectome import ConnectomeInfo, write_connectome
from fmriflow.training.config import TrainConfig
from fmriflow.training.loop import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N_REGIONS, N_TIME, N_SUBJECTS = 12, 200, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Subjects whose regions mix 3 AR(1) sources, and connectomes sharing the sources' block structure."""
    root = tmp_path_factory.mktemp("symphony")
    rng = np.random.default_rng(0)
    group = np.arange(N_REGIONS) % 3
    loading = np.eye(3)[group].T * 0.8 + 0.2 * rng.random((3, N_REGIONS))
    runs, names = [], [f"r{i}" for i in range(N_REGIONS)]
    (root / "sc").mkdir()
    for s in range(N_SUBJECTS):
        src = np.zeros((N_TIME, 3))
        for t in range(1, N_TIME):
            src[t] = 0.9 * src[t - 1] + np.sqrt(1 - 0.81) * rng.standard_normal(3)
        values = src @ loading + 0.1 * rng.standard_normal((N_TIME, N_REGIONS))
        path = root / f"sub-{s:02d}_timeseries.tsv"
        pd.DataFrame(values, columns=names).to_csv(path, sep="\t", index=False)
        runs.append({"run": f"sub-{s:02d}/func/sub-{s:02d}_task-rest", "subject": f"{s:02d}", "tr": 2.0,
                     "timeseries": path})
        noise = 0.2 * rng.standard_normal((N_REGIONS, N_REGIONS))
        sc = np.where(group[:, None] == group[None, :], 0.5, -1.0) + (noise + noise.T) / 2
        np.fill_diagonal(sc, 0.0)
        write_connectome(root / "sc" / f"sub-{s:02d}_seg-toy_connectome.tsv", sc, names,
                         ConnectomeInfo("simulated", "test"), inputs=[path])
    splits = make_splits([r["subject"] for r in runs], fractions=(0.75, 0.25, 0.0), seed=0)
    build_dataset(runs, splits, root / "dataset", window=40, stride=20)
    return root


def config(root: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(task="brainsymphony", dataset=str(root / "dataset"), sc_dir=str(root / "sc"), out=str(out),
                model="tiny", batch_size=8, max_steps=12, warmup_steps=2, checkpoint_every=4, eval_every=12,
                log_every=1, num_workers=0, lr=3e-3)
    return TrainConfig(**{**base, **overrides})


def test_loss_falls_and_the_model_records_its_modalities(data, tmp_path):
    train(config(data, tmp_path, max_steps=40, eval_every=40))
    val = pd.read_csv(tmp_path / "train_log.csv").dropna(subset=["val_loss"]).set_index("step")["val_loss"]
    assert val[40] < 0.8 * val[0], val.tolist()
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["task"] == "brainsymphony" and saved["modalities"] == "both"
    assert saved["model_config"]["window"] == 40 and saved["n_regions"] == N_REGIONS
    assert any(k.startswith("structural.") for k in saved["model"])


def test_resume_is_exact(data, tmp_path):
    train(config(data, tmp_path / "straight"))
    result = train(config(data, tmp_path / "split"), should_stop=lambda step: step == 6)
    assert result == {"step": 6, "interrupted": True}
    train(config(data, tmp_path / "split"))
    logs = [pd.read_csv(tmp_path / d / "train_log.csv").dropna(subset=["train_loss"]) for d in ("straight", "split")]
    np.testing.assert_allclose(logs[1]["train_loss"], logs[0]["train_loss"], atol=1e-6, rtol=0)
    straight, split = (torch.load(tmp_path / d / "model.pt", weights_only=False)["model"] for d in ("straight", "split"))
    for key, value in straight.items():
        assert torch.equal(split[key], value), key


@pytest.mark.parametrize("modalities", ["fmri", "sc"])
def test_unimodal_paths_train(data, tmp_path, modalities):
    train(config(data, tmp_path, modalities=modalities, max_steps=2, sc_dir="" if modalities == "fmri" else str(data / "sc")))
    keys = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    assert any(k.startswith("functional.") for k in keys) == (modalities == "fmri")
    assert any(k.startswith("structural.") for k in keys) == (modalities == "sc")


def test_subjects_without_connectomes_are_left_out_or_named(data, tmp_path):
    """A subject without a connectome: its windows take no part in multimodal pretraining (the
    fMRI-only path is for its use); a split with none, or no connectome at all, is an error."""
    from fmriflow.training.symphony import brainsymphony_task

    index = pd.read_csv(data / "dataset" / "index.tsv", sep="\t", dtype={"subject": str})
    train_subjects = sorted(index.loc[index["split"] == "train", "subject"].unique())
    val_subjects = sorted(index.loc[index["split"] == "val", "subject"].unique())

    def keep(folder, subjects):
        folder.mkdir()
        for path in sorted((data / "sc").glob("sub-*.tsv")):
            if path.name[4:6] in subjects:
                (folder / path.name).write_bytes(path.read_bytes())
        return str(folder)

    dropped = train_subjects[0]
    partial = keep(tmp_path / "partial", [s for s in train_subjects + val_subjects if s != dropped])
    task = brainsymphony_task(config(data, tmp_path / "run", sc_dir=partial))
    windows = index.groupby(["split", "subject"]).size()
    assert len(task.train_set) == windows["train"].drop(dropped).sum()
    assert len(task.val_set) == windows["val"].sum()
    assert dropped not in task.train_set.subjects and task.train_set[0]["sc"].shape == (N_REGIONS, N_REGIONS)
    no_val = keep(tmp_path / "no_val", train_subjects)
    with pytest.raises(InputError, match=r"no subject of the \['val'\] split has a connectome"):
        brainsymphony_task(config(data, tmp_path / "run", sc_dir=no_val))
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=r"no connectome for subject\(s\) \['00', .*--modalities fmri"):
        train(config(data, tmp_path / "run", sc_dir=str(tmp_path / "none")))
    with pytest.raises(InputError, match="needs --sc-dir"):
        train(config(data, tmp_path / "run", sc_dir=""))


def test_probe_of_the_pretrained_model(data, tmp_path):
    from fmriflow.finetune.region_probe import probe_step
    from fmriflow.io import read_json, read_tsv

    train(config(data, tmp_path / "run", max_steps=4))
    networks = tmp_path / "networks.tsv"
    pd.DataFrame({"name": [f"r{i}" for i in range(N_REGIONS)][::-1],  # any order: matched by name
                  "network": (np.arange(N_REGIONS) % 3)[::-1]}).to_csv(networks, sep="\t", index=False)
    metrics = probe_step(tmp_path / "run" / "model.pt", data / "dataset", tmp_path / "probe", networks=networks,
                         sc_dir=str(data / "sc"), max_windows=6, n_folds=2)
    regions = read_tsv(tmp_path / "probe" / "regions.tsv")
    assert list(regions["region"]) == [f"r{i}" for i in range(N_REGIONS)]
    assert list(regions["network"]) == list(np.arange(N_REGIONS) % 3)
    assert regions["incoming_attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert regions["reconstruction_r2"].notna().all()
    assert np.mean(regions["predicted_network"] == regions["network"]) == pytest.approx(metrics["accuracy"])
    saved = read_json(tmp_path / "probe" / "network_identification.json")
    assert saved["chance"] == pytest.approx(4 / 12) and saved["n_windows"] == 6
    assert saved["Provenance"]["Step"] == "brainsymphony_probe"
    assert (tmp_path / "probe" / "regions.json").is_file() and (tmp_path / "probe" / "networks.tsv").is_file()
