"""Pretraining on the CPU: the loss falls, resuming is exact, SIGTERM checkpoints, DDP equals one process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.datasets.regions import build_dataset, make_splits
from fmriflow.training.config import TrainConfig
from fmriflow.training.loop import train

N_REGIONS, N_TIME = 24, 400


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 subjects whose regions mix 3 AR(1) sources: structure a masked autoencoder can learn."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    loading = 0.2 + 0.8 * rng.random((3, N_REGIONS))  # positive mixing: a structure tiny learns in a few hundred steps
    runs = []
    for s in range(8):
        src = np.zeros((N_TIME, 3))
        for t in range(1, N_TIME):
            src[t] = 0.9 * src[t - 1] + np.sqrt(1 - 0.81) * rng.standard_normal(3)
        values = src @ loading + 0.1 * rng.standard_normal((N_TIME, N_REGIONS))
        path = root / f"sub-{s:02d}_timeseries.tsv"
        pd.DataFrame(values, columns=[f"r{i}" for i in range(N_REGIONS)]).to_csv(path, sep="\t", index=False)
        runs.append({"run": f"sub-{s:02d}/func/sub-{s:02d}_task-rest", "subject": f"{s:02d}", "tr": 2.0, "timeseries": path})
    splits = make_splits([r["subject"] for r in runs], fractions=(0.75, 0.25, 0.0), seed=0)
    build_dataset(runs, splits, root / "dataset", window=40, stride=10)
    coords = root / "coords.tsv"
    pd.DataFrame({"index": range(1, N_REGIONS + 1), "name": [f"r{i}" for i in range(N_REGIONS)],
                  "x": rng.uniform(-60, 60, N_REGIONS), "y": rng.uniform(-90, 60, N_REGIONS),
                  "z": rng.uniform(-40, 70, N_REGIONS)}).to_csv(coords, sep="\t", index=False)
    return root / "dataset", coords


def config(data, out, **overrides) -> TrainConfig:
    dataset, coords = data
    base = dict(dataset=str(dataset), coords=str(coords), out=str(out), model="tiny", batch_size=8, max_steps=20,
                warmup_steps=3, checkpoint_every=5, eval_every=10, log_every=1, num_workers=0, lr=3e-3)
    return TrainConfig(**{**base, **overrides})


def log(out) -> pd.DataFrame:
    frame = pd.read_csv(Path(out) / "train_log.csv")
    return frame.dropna(subset=["train_loss"]).set_index("step")


def weights(out) -> dict:
    return torch.load(Path(out) / "model.pt", weights_only=False)["model"]


def test_loss_falls(data, tmp_path):
    train(config(data, tmp_path, max_steps=250, batch_size=64, lr=5e-3, log_every=25, eval_every=125))
    val = pd.read_csv(tmp_path / "train_log.csv").dropna(subset=["val_loss"]).set_index("step")["val_loss"]
    assert list(val.index) == [0, 125, 250]
    assert val[250] < 0.7 * val[0], val.tolist()
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "model.pt").is_file()
    # the same curves in TensorBoard, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tb_val = [(e.step, e.value) for e in events.Scalars("val_loss")]
    assert [s for s, _ in tb_val] == [0, 125, 250]
    np.testing.assert_allclose([v for _, v in tb_val], val.to_numpy(), rtol=1e-6)


def test_resume_is_exact(data, tmp_path):
    train(config(data, tmp_path / "straight"))
    result = train(config(data, tmp_path / "split"), should_stop=lambda step: step == 10)
    assert result == {"step": 10, "interrupted": True}
    assert not (tmp_path / "split" / "model.pt").exists()  # no final artefact before the end
    train(config(data, tmp_path / "split"))
    straight, split = log(tmp_path / "straight"), log(tmp_path / "split")
    assert list(split.index) == list(range(1, 21))
    np.testing.assert_allclose(split["train_loss"], straight["train_loss"], atol=1e-6, rtol=0)
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(tmp_path / "split")[key], value), key


def _train_cmd(cfg: TrainConfig, launcher: list[str]) -> list[str]:
    args = [f"--dataset={cfg.dataset}", f"--coords={cfg.coords}", f"--out={cfg.out}", f"--model={cfg.model}",
            f"--batch-size={cfg.batch_size}", f"--max-steps={cfg.max_steps}", f"--warmup-steps={cfg.warmup_steps}",
            f"--checkpoint-every={cfg.checkpoint_every}", f"--eval-every={cfg.eval_every}",
            f"--log-every={cfg.log_every}", "--num-workers=0", f"--lr={cfg.lr}"]
    return [*launcher, "-m", "fmriflow.train", *args]


def _wait_for_step(log_file: Path, step: int, timeout: float = 120) -> None:
    """Poll the running log until training has logged ``step`` (or the timeout passes)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log_file.exists():
            try:
                steps = pd.read_csv(log_file)["step"]
            except (pd.errors.ParserError, pd.errors.EmptyDataError):  # caught mid-write
                steps = pd.Series(dtype=float)
            if steps.notna().any() and steps.max() >= step:
                return
        time.sleep(0.2)
    raise AssertionError(f"training did not reach step {step} within {timeout} s")


def test_sigterm_writes_checkpoint_and_rerun_continues(data, tmp_path):
    long = dict(max_steps=1500, checkpoint_every=100000, eval_every=100000, log_every=5)
    cfg = config(data, tmp_path / "killed", **long)
    proc = subprocess.Popen(_train_cmd(cfg, [sys.executable]), stderr=subprocess.PIPE, text=True)
    log_file = tmp_path / "killed" / "train_log.csv"
    _wait_for_step(log_file, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "checkpoint written, rerun to continue" in err
    stopped_at = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"]
    assert 10 <= stopped_at < 1500
    # the rerun continues, and ends where an uninterrupted run ends
    assert subprocess.run(_train_cmd(cfg, [sys.executable])).returncode == 0
    train(config(data, tmp_path / "straight", **long))
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(tmp_path / "killed")[key], value), key


def test_ddp_two_processes_equal_one(data, tmp_path):
    """gloo DDP on 2 CPU processes (torchrun) = 1 process with the same global batch."""
    cfg = config(data, tmp_path / "ddp", max_steps=10)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(_train_cmd(cfg, launcher), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(config(data, tmp_path / "single", max_steps=10))
    for key, value in weights(tmp_path / "single").items():
        torch.testing.assert_close(weights(tmp_path / "ddp")[key], value, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(log(tmp_path / "ddp")["train_loss"], log(tmp_path / "single")["train_loss"], atol=1e-5)


def test_sigterm_to_torchrun_with_loader_workers(data, tmp_path):
    """SLURM signals torchrun, which signals each rank's process group, DataLoader workers included."""
    cfg = config(data, tmp_path / "ddp", max_steps=3000, checkpoint_every=100000, eval_every=100000, log_every=5)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd = [c if c != "--num-workers=0" else "--num-workers=2" for c in _train_cmd(cfg, launcher)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log_file = tmp_path / "ddp" / "train_log.csv"
    _wait_for_step(log_file, 10)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    step = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["step"]
    assert 10 <= step < 3000
    rows = pd.read_csv(log_file)
    assert rows["step"].max() <= step + 5  # nothing ran past the checkpoint but the unfinished log interval


def test_loss_falls_on_demo_data(tmp_path, atlas_dir):
    """The tiny model on the demo's own region signals (8 subjects, 2-patch windows) predicts masked patches better.

    The demo's generative model bounds how far the loss can fall: a masked region is predictable
    only from its network at the same time (within-network correlation 0.42), so the best
    possible masked MSE is about 0.6 of the untrained one; 300 CPU steps get part of the way.
    """
    from fmriflow.atlas import a424_labels_table
    from fmriflow.demo import generate_demo

    demo = tmp_path / "demo"
    generate_demo(demo, atlas_dir / "A424+2mm.nii.gz", atlas_dir / "A424_Coordinates.dat", n_subjects=8, n_trs=200,
                  bold_res=4, seed=1, jobs=2)
    runs = [{"run": f"sub-{p.name[4:6]}/func/sub-{p.name[4:6]}_task-rest", "subject": p.name[4:6], "tr": 2.0, "timeseries": p}
            for p in sorted((demo / "ground_truth").glob("sub-*_desc-true_timeseries.tsv"))]
    splits = make_splits([r["subject"] for r in runs], fractions=(0.75, 0.25, 0.0), seed=0)
    build_dataset(runs, splits, tmp_path / "dataset", window=40, stride=20)
    lut = tmp_path / "lut.tsv"
    a424_labels_table(atlas_dir / "A424_Coordinates.dat").to_csv(lut, sep="\t", index=False)
    train(TrainConfig(dataset=str(tmp_path / "dataset"), coords=str(lut), out=str(tmp_path / "run"), model="tiny",
                      batch_size=16, max_steps=300, lr=5e-3, warmup_steps=10, eval_every=150, log_every=50,
                      checkpoint_every=10000, num_workers=0))
    val = pd.read_csv(tmp_path / "run" / "train_log.csv").dropna(subset=["val_loss"]).set_index("step")["val_loss"]
    assert list(val.index) == [0, 150, 300]
    assert val[300] < val[150] < val[0] and val[300] < 0.96 * val[0], val.tolist()


def test_rerun_with_other_settings_or_data_starts_over(data, tmp_path):
    """Snakemake reruns pretraining when its params or dataset change; the old checkpoint (here at
    the last step) must not be resumed, or the old model would be written as the new one."""
    out = tmp_path / "run"
    train(config(data, out, lr=3e-3))
    train(config(data, out, lr=1e-3))  # finished checkpoint of lr 3e-3 present
    assert (out / "checkpoint.pt.stale").is_file()
    train(config(data, tmp_path / "fresh", lr=1e-3))
    for key, value in weights(tmp_path / "fresh").items():
        assert torch.equal(weights(out)[key], value), key

    # the dataset changed under the same path (a new card): starts over too
    card = Path(data[0]) / "dataset_card.json"
    original = card.read_bytes()
    try:
        card.write_bytes(original.replace(b"{", b"{\"note\": \"rebuilt\", ", 1))
        result = train(config(data, out, lr=1e-3, max_steps=2))
    finally:
        card.write_bytes(original)
    assert result["step"] == 2 and list(log(out).index) == [1, 2]


def test_rerun_with_other_pace_settings_resumes(data, tmp_path):
    """Checkpoint interval, loader workers and logging do not shape the model: a rerun under
    other values continues the run (e.g. resubmitted with more workers after a time limit)."""
    out = tmp_path / "run"
    train(config(data, out, max_steps=20), should_stop=lambda step: step == 10)
    train(config(data, out, max_steps=20, checkpoint_every=7, log_every=2))
    assert not (out / "checkpoint.pt.stale").exists()
    train(config(data, tmp_path / "straight", max_steps=20))
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(out)[key], value), key
