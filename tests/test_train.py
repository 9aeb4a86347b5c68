"""Pretraining on the CPU: the loss falls, resuming is exact, SIGTERM checkpoints, DDP equals one process;
a run that fails or cannot reach a step boundary ends at once, DataLoader workers included."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.datasets.regions import RegionWindowDataset, build_dataset, make_splits
from fmriflow.errors import InputError
from fmriflow.training import loop
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


def _progress_lines(text: str, task: str = "brainlm") -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{task} training:")]


def test_progress_in_the_log_has_steps_time_left_and_loss(data, tmp_path):
    """A real run with stderr in a file, as the pretrain rule's log: whole lines with the step count
    and tqdm's "elapsed<left" estimate; at most one line per interval (here every step, interval 0)."""
    cfg = config(data, tmp_path / "run", max_steps=12, log_every=4)
    log_path = tmp_path / "pretrain.log"
    with log_path.open("w") as log_file:
        proc = subprocess.run(_train_cmd(cfg, [sys.executable]), stderr=log_file, stdout=log_file,
                              env={**os.environ, "FMRIFLOW_PROGRESS_INTERVAL": "0"})
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    lines = _progress_lines(text)
    assert lines[0].startswith("brainlm training:   0%") and "0/12" in lines[0]
    assert lines[-1].startswith("brainlm training: 100%") and "12/12" in lines[-1]
    counts = [int(line.split("|")[2].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and len(lines) <= 12 + 2  # a line per step at most (interval 0), and the close
    assert all(re.search(r"\[\d+:\d+<\d+:\d+", line) for line in lines[1:]), lines  # elapsed<time left
    # the loss of the last log row (step 12) rides along, as train_log.csv has it
    last_loss = log(tmp_path / "run")["train_loss"][12]
    assert f"train loss {last_loss:.4g}" in lines[-1]


def test_ddp_two_processes_equal_one(data, tmp_path):
    """gloo DDP on 2 CPU processes (torchrun) = 1 process with the same global batch."""
    cfg = config(data, tmp_path / "ddp", max_steps=10)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(_train_cmd(cfg, launcher), capture_output=True, text=True,
                          env={**os.environ, "FMRIFLOW_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone shows progress: one bar, started once
    assert sum(" 0/10 " in line for line in _progress_lines(proc.stderr)) == 1, proc.stderr[-3000:]
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


# --- failures and stops that cannot wait for a step boundary ---------------------------------------

def _live(where) -> list[str]:
    """'pid command line' of each live (not zombie) process for which ``where(ppid, session, cmdline)`` holds."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        state, ppid, _, session = stat[stat.rindex(")") + 2:].split()[:4]
        if state != "Z" and where(int(ppid), int(session), cmdline):
            found.append(f"{entry.name} {cmdline}")
    return found


def _left_behind(proc: subprocess.Popen, marker: str) -> list[str]:
    """Processes of a training process started in its own session: in that session or carrying ``marker``."""
    return _live(lambda ppid, session, cmdline: session == proc.pid or marker in cmdline)


def _ends_within(proc: subprocess.Popen, seconds: float) -> tuple[float, str]:
    """(seconds it took, stderr) of a process that must end within ``seconds``; else it is killed and the test fails."""
    t0 = time.perf_counter()
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too: they ignore SIGTERM
        _, err = proc.communicate()
        pytest.fail(f"still running after {seconds:.0f} s; stderr tail:\n{err[-2000:]}")
    return time.perf_counter() - t0, err


@pytest.fixture(scope="module")
def startup() -> float:
    """Seconds ``python -m fmriflow.train --help`` takes here: the imports any run pays before it can fail."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fmriflow.train", "--help"], capture_output=True, check=True, timeout=300)
    return time.perf_counter() - t0


def test_check_batch_size_says_what_is_allowed():
    from fmriflow.training.sampling import check_batch_size

    cfg = TrainConfig(dataset="ds", out="run", batch_size=8)
    check_batch_size(cfg, 8, world=2)
    with pytest.raises(InputError, match=r"--batch-size \(config pretrain.batch_size\) must be between 1 and the 7 "
                                         r"training samples of ds; 8 was provided"):
        check_batch_size(cfg, 7, world=1)
    with pytest.raises(InputError, match=r"--batch-size \(config pretrain.batch_size\) must be divisible by the 3 "
                                         r"training processes.*; 8 was provided"):
        check_batch_size(cfg, 100, world=3)
    with pytest.raises(InputError, match=r"^ds: the training split has no samples"):
        check_batch_size(cfg, 0, world=1)
    with pytest.raises(InputError, match="between 1 and"):
        check_batch_size(dataclasses.replace(cfg, batch_size=0), 100, world=1)


def test_batch_size_over_the_training_samples_fails_at_once(data, tmp_path, startup):
    """The reported hang: the sampler's error came from the loader's first prefetch, after its workers had
    started; they ignore SIGTERM, and the exiting interpreter waited on them forever."""
    n_train = len(RegionWindowDataset(data[0], "train"))
    cfg = config(data, tmp_path / "run", batch_size=n_train + 1)
    cmd = [c if c != "--num-workers=0" else "--num-workers=2" for c in _train_cmd(cfg, [sys.executable])]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    elapsed, err = _ends_within(proc, startup + 30)
    assert proc.returncode == 1, err
    assert f"--batch-size (config pretrain.batch_size) must be between 1 and the {n_train} training samples" in err
    assert f"{n_train + 1} was provided" in err
    assert elapsed < startup + 15, (elapsed, startup)
    assert _left_behind(proc, str(tmp_path / "run")) == []


class _Failing(torch.utils.data.Dataset):
    """A training set whose samples fail (in the DataLoader's workers)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        raise RuntimeError("toy read failure")


def _failing_loss(model, batch, noise):
    raise RuntimeError("toy loss failure")


@pytest.mark.parametrize("where", ["worker", "loop"])
def test_error_in_the_loop_ends_the_loader_workers(data, tmp_path, monkeypatch, where):
    build_task = loop.build_task

    def failing_task(cfg):
        task = build_task(cfg)
        if where == "worker":
            task.train_set = _Failing(task.train_set)
        else:
            task.loss = _failing_loss
        return task

    monkeypatch.setattr(loop, "build_task", failing_task)
    before = set(_live(lambda ppid, session, cmdline: ppid == os.getpid()))
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="toy read failure" if where == "worker" else "toy loss failure"):
        train(config(data, tmp_path / "run", num_workers=2, max_steps=5))
    left = [p for p in _live(lambda ppid, session, cmdline: ppid == os.getpid()) if p not in before]
    # on failure, end them here, or this process waits on them at exit; torch's SIGCHLD handler
    # would take their end for a crash and raise in whatever runs next
    sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for p in left:
            os.kill(int(p.split()[0]), signal.SIGKILL)
            os.waitpid(int(p.split()[0]), 0)
    finally:
        signal.signal(signal.SIGCHLD, sigchld)
    assert left == []
    assert signal.getsignal(signal.SIGTERM) is handler  # the run gives its signals back


# Runs fmriflow.train (argv[3:]) with one split stalling, as on a stuck read, once asked for a sample:
# argv[1] "evaluate": the validation set, in the training process (the step-0 evaluation, before the
# loop); "worker": the training set, in the DataLoader workers (the loop waits for its first batch).
# The file argv[2] appears when the stall begins.
STALLING = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import torch
    from fmriflow.training import loop

    where, flag, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]

    class Stalling(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            flag.touch()
            time.sleep(600)

    build_task = loop.build_task

    def stalling_task(cfg):
        task = build_task(cfg)
        split = "val_set" if where == "evaluate" else "train_set"
        setattr(task, split, Stalling(getattr(task, split)))
        return task

    loop.build_task = stalling_task
    sys.exit(loop.main(argv))
''')


def _stalling_run(data, tmp_path, where: str) -> tuple[subprocess.Popen, Path]:
    """A training process (own session) stalled where ``where`` says, once the stall has begun; and its flag."""
    flag = tmp_path / "stalled"
    cmd = _train_cmd(config(data, tmp_path / "run", max_steps=50), [sys.executable, "-c", STALLING, where, str(flag)])
    cmd = [c for c in cmd if c not in ("-m", "fmriflow.train")]
    cmd = [c if c != "--num-workers=0" else "--num-workers=2" for c in cmd]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not flag.exists():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run did not stall (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    time.sleep(0.5)  # into the sleep of the stall
    return proc, flag


def test_sigterm_outside_the_steps_stops_at_once(data, tmp_path):
    """A signal while no step runs (here the step-0 evaluation, stuck) cannot wait for a step boundary."""
    proc, _ = _stalling_run(data, tmp_path, "evaluate")
    proc.send_signal(signal.SIGTERM)
    elapsed, err = _ends_within(proc, 20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM before a step boundary" in err
    assert elapsed < 10
    assert _left_behind(proc, str(tmp_path / "run")) == []


def test_second_sigterm_stops_a_run_stuck_on_its_workers(data, tmp_path):
    """The first signal asks for a checkpoint at the next step boundary; a second one ends the run at once,
    workers (stuck in a read, deaf to SIGTERM) included."""
    proc, _ = _stalling_run(data, tmp_path, "worker")
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert proc.poll() is None  # waits for the step boundary
    proc.send_signal(signal.SIGTERM)
    elapsed, err = _ends_within(proc, 20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert elapsed < 10
    assert _left_behind(proc, str(tmp_path / "run")) == []


def test_workers_die_with_their_training_process(data, tmp_path):
    """SIGKILL leaves the training process no clean-up: its workers, busy in a read, must end by themselves
    (torch's watchdog looks only between samples; the kernel's parent-death signal does not wait)."""
    proc, _ = _stalling_run(data, tmp_path, "worker")
    assert len(_left_behind(proc, str(tmp_path / "run"))) == 3  # the training process and its 2 workers
    proc.kill()
    proc.wait(timeout=30)  # not communicate(): live workers hold its stderr open
    proc.stderr.close()
    deadline = time.time() + 3
    while _left_behind(proc, str(tmp_path / "run")) and time.time() < deadline:
        time.sleep(0.1)
    left = _left_behind(proc, str(tmp_path / "run"))
    for p in left:
        os.kill(int(p.split()[0]), signal.SIGKILL)
    assert left == []


def test_checkpoint_of_an_older_version_resumes_when_new_settings_hold_their_defaults(data, tmp_path):
    """A setting added to TrainConfig later is absent from a checkpoint written before it: at its
    default it shapes nothing, so a run in flight resumes after an upgrade; at another value it
    starts over."""
    out = tmp_path / "run"
    train(config(data, out, max_steps=20), should_stop=lambda step: step == 10)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    for key in ("modalities", "sc_dir", "atlas"):  # settings newer than such a checkpoint
        del state["config"][key]
    torch.save(state, out / "checkpoint.pt")
    train(config(data, out, max_steps=20))
    assert not (out / "checkpoint.pt.stale").exists()
    assert list(log(out).index) == list(range(1, 21))

    train(config(data, tmp_path / "other", max_steps=20), should_stop=lambda step: step == 10)
    state = torch.load(tmp_path / "other" / "checkpoint.pt", weights_only=False)
    del state["config"]["modalities"]
    torch.save(state, tmp_path / "other" / "checkpoint.pt")
    train(config(data, tmp_path / "other", max_steps=20, modalities="fmri"))
    assert (tmp_path / "other" / "checkpoint.pt.stale").is_file()
