"""Training of fmriflow's models: one loop for every model family (a *task*).

Tasks (``--task``): ``brainlm`` pretrains the region-level masked autoencoder (the default);
``neurostorm-mae`` pretrains NeuroSTORM on 4-D windows; ``brainmt`` trains BrainMT on a
participants.tsv column; ``neurostorm`` prompt-tunes a pretrained NeuroSTORM on one
(``fmriflow.training.tasks`` builds the voxel ones). A task supplies the model, the train and
validation datasets, the loss of a batch and how much masking noise a batch needs; the loop
below is shared.

One entry point for one process, several GPUs (``torchrun --nproc-per-node N``) and several
nodes (``srun torchrun ...``): DDP starts when ``torchrun`` sets ``RANK``. Training is exactly
resumable: the checkpoint holds model, optimiser, scheduler, step and RNG states, and the data
order and masks are functions of (seed, step), so a run stopped at any checkpoint and resumed
follows the same trajectory as an uninterrupted one. SIGTERM / SIGUSR1 (SLURM's warning before
a time limit or preemption) write a checkpoint and stop; rerunning the same command continues.

    python -m fmriflow.train --dataset DIR --coords LUT.tsv --out DIR [--model tiny] [--max-steps N] ...
    python -m fmriflow.train --task brainmt --dataset VOXELS --participants participants.tsv --target age \
        --target-kind regression --out DIR --model tiny --window 20 ...
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..io import atomic_path
from ..provenance import write_sidecar

CHECKPOINT = "checkpoint.pt"


TASKS = ("brainlm", "neurostorm-mae", "brainmt", "neurostorm")
TARGET_KINDS = ("classification", "regression")


@dataclass
class TrainConfig:
    dataset: str  # folder written by fmriflow.datasets.regions.build_dataset (voxel tasks: fmriflow.datasets.voxels)
    out: str  # run folder: checkpoint, metrics.csv, final model
    task: str = "brainlm"  # one of TASKS
    coords: str = ""  # brainlm: atlas look-up TSV with x, y, z columns (region order of the dataset)
    model: str = "tiny"  # a config name of the task's model (e.g. fmriflow.models.brainlm.CONFIGS)
    batch_size: int = 8  # global batch per optimiser step, split evenly across ranks
    max_steps: int = 200
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # end of the cosine decay
    warmup_steps: int = 20
    weight_decay: float = 0.05  # on matrices only, not biases or norms
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    checkpoint_every: int = 50
    eval_every: int = 50
    log_every: int = 10  # host syncs for metrics happen only this often
    num_workers: int = 2
    seed: int = 0
    compile: bool = False
    # voxel tasks
    window: int = 0  # frames per sample; 0: the model's max_frames
    stride: int = 0  # frames between window starts; 0: the window
    participants: str = ""  # brainmt / neurostorm: participants.tsv with the target column
    target: str = ""  # the column to predict
    target_kind: str = "classification"  # classification (cross-entropy) | regression (MSE on the standardised target)
    init_from: str = ""  # neurostorm: model.pt of neurostorm-mae pretraining, whose encoder is loaded and frozen
    prompt_len: int = 4  # neurostorm: prompt tokens per block
    grad_checkpoint: bool = False  # recompute blocks in the backward pass (voxel models)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"'task' must be one of {TASKS}; {self.task!r} was provided")
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"'target_kind' must be one of {TARGET_KINDS}; {self.target_kind!r} was provided")

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "TrainConfig":
        parser = argparse.ArgumentParser(prog="fmriflow-train", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        for field in dataclasses.fields(cls):
            name = "--" + field.name.replace("_", "-")
            if field.type == "bool":
                parser.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default)
            elif field.name == "betas":
                parser.add_argument(name, type=float, nargs=2, default=field.default)
            elif field.default is dataclasses.MISSING:
                parser.add_argument(name, required=True)
            else:
                parser.add_argument(name, type=type(field.default), default=field.default)
        args = parser.parse_args(argv)
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in vars(args).items()})


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    if "RANK" not in os.environ:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return Dist(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Dist(rank, world, local, device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def global_batches(n_samples: int, batch_size: int, seed: int, start_step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(step, sample indices of that step's global batch), as a pure function of (seed, step).

    Epochs are seeded permutations; a batch never spans two epochs (the tail of an epoch is
    dropped), so resuming at any step needs no replay.
    """
    per_epoch = n_samples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {n_samples} training samples")
    step = start_step
    while True:
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n_samples)
        yield step, order[position * batch_size:(position + 1) * batch_size]
        step += 1


def mask_noise(seed: int, step: int, batch: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """The masking noise of a global batch: identical on every rank, whatever the world size."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    return torch.rand(batch, n_tokens, generator=generator).to(device)


class _RankBatches:
    """This rank's share of each global batch from ``start_step`` on, for a DataLoader's batch_sampler."""

    def __init__(self, n_samples: int, cfg: "TrainConfig", ddp: "Dist", start_step: int):
        self.n_samples, self.cfg, self.ddp, self.start = n_samples, cfg, ddp, start_step

    def __iter__(self):
        local = self.cfg.batch_size // self.ddp.world
        for step, indices in global_batches(self.n_samples, self.cfg.batch_size, self.cfg.seed, self.start):
            if step >= self.cfg.max_steps:
                return
            yield indices[self.ddp.rank * local:(self.ddp.rank + 1) * local].tolist()

    def __len__(self) -> int:
        return max(0, self.cfg.max_steps - self.start)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the training process.

    torchrun signals each rank's whole process group; a worker killed by it would crash
    the rank's next batch fetch before the checkpoint is written.
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class _Stop:
    """Set by SIGTERM / SIGUSR1; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum


@dataclass
class Task:
    """What the loop needs from a model family; built by ``build_task``."""

    model: torch.nn.Module
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    loss: Callable[[torch.nn.Module, dict, torch.Tensor | None], torch.Tensor]  # (model or DDP, batch, noise) -> ()
    n_noise: Callable[[torch.Tensor], int]  # masking noise values per sample for a batch's x (0: none)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # more entries of model.pt


def build_task(cfg: TrainConfig) -> Task:
    """The model, data and loss of ``cfg.task``."""
    if cfg.task == "brainlm":
        return _brainlm_task(cfg)
    from .tasks import build_voxel_task

    return build_voxel_task(cfg)


def _brainlm_task(cfg: TrainConfig) -> Task:
    from ..datasets.regions import RegionWindowDataset
    from ..io import read_tsv
    from ..models.brainlm import create_model

    if not cfg.coords:
        raise ValueError("task brainlm needs --coords (the atlas look-up TSV with x, y, z)")
    lut = read_tsv(cfg.coords)
    model = create_model(cfg.model, torch.tensor(lut[["x", "y", "z"]].to_numpy(dtype=np.float32)))
    return Task(
        model=model,
        train_set=RegionWindowDataset(cfg.dataset, "train"),
        val_set=RegionWindowDataset(cfg.dataset, "val"),
        loss=lambda m, batch, noise: m(batch["x"], noise=noise).loss,
        n_noise=lambda x: model.n_tokens(x.shape[1], x.shape[2]),
    )


def train(cfg: TrainConfig, should_stop: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Train (or resume) to ``cfg.max_steps``; ``should_stop(step)`` acts like a signal (tests, budgets)."""
    from ..models.ssm import backend_of

    ddp = setup_distributed()
    if cfg.batch_size % ddp.world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {ddp.world} processes")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # every RNG the checkpoint records is seeded, so a rerun writes byte-identical checkpoints
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = task.model.to(ddp.device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and ddp.device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    # matrices decay; biases, norms and what a model marks (_no_weight_decay: SSM A_log and D, embeddings) do not
    decay = [p for p in params if p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)]
    no_decay = [p for p in params if p.ndim < 2 or getattr(p, "_no_weight_decay", False)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, fused=ddp.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    info = {"task": cfg.task, "model_name": cfg.model, "mamba_backend": backend_of(model), **task.info}
    if ddp.master:
        print(f"fmriflow-train: task {cfg.task}, model {cfg.model}, {sum(p.numel() for p in model.parameters())} "
              f"parameters ({sum(p.numel() for p in params)} trainable), Mamba path {info['mamba_backend']}, "
              f"{ddp.world} process(es) on {ddp.device.type}, {'bf16' if bf16 else 'fp32'}", file=sys.stderr)

    step = 0
    checkpoint = out / CHECKPOINT
    inputs = run_inputs(cfg)
    state = _resumable(checkpoint, cfg, inputs, ddp)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        _set_rng(state["rng"])
    trainable = DistributedDataParallel(model, device_ids=[ddp.local_rank] if ddp.device.type == "cuda" else None) if ddp.world > 1 else model
    if cfg.compile:
        trainable = torch.compile(trainable, dynamic=False)  # dynamic shapes broke inductor backward (torch 2.11)

    train_set, val_set = task.train_set, task.val_set
    local = cfg.batch_size // ddp.world
    stop = _Stop()
    metrics = _Metrics(out / "train_log.csv", ddp.master, resume_step=step)
    loss_sum = torch.zeros((), device=ddp.device)
    t0, seen = time.perf_counter(), 0
    n_noise = None

    if step == 0:  # the untrained model's validation loss: the baseline the curve starts from
        metrics.write(step=0, val_loss=evaluate(model, task, cfg, ddp, bf16))
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=_RankBatches(len(train_set), cfg, ddp, step), num_workers=cfg.num_workers,
        pin_memory=ddp.device.type == "cuda", persistent_workers=False, worker_init_fn=_ignore_stop_signals,
    )
    for batch in loader:
        batch = _to_device(batch, ddp.device)
        if n_noise is None:
            n_noise = task.n_noise(batch["x"])
        noise = None
        if n_noise:
            noise = mask_noise(cfg.seed, step, cfg.batch_size, n_noise, ddp.device)[ddp.rank * local:(ddp.rank + 1) * local]
        with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.loss(trainable, batch, noise)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        seen += cfg.batch_size
        step += 1

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            if ddp.world > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            elapsed = time.perf_counter() - t0
            n_logged = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            metrics.write(step=step, train_loss=loss_sum.item() / n_logged, lr=scheduler.get_last_lr()[0],
                          grad_norm=float(grad_norm), samples_per_s=seen / elapsed)
            loss_sum.zero_()
            t0, seen = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            metrics.write(step=step, val_loss=evaluate(model, task, cfg, ddp, bf16))
        interrupted = stop.signum is not None or (should_stop is not None and should_stop(step))
        if ddp.world > 1:  # every rank must agree to stop at the same step
            flag = torch.tensor(float(interrupted), device=ddp.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            interrupted = bool(flag.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or interrupted:
            save_checkpoint(checkpoint, model, optimizer, scheduler, step, cfg, ddp, inputs=inputs)
        if interrupted:
            break

    result = {"step": step, "interrupted": step < cfg.max_steps}
    if ddp.master and step >= cfg.max_steps:
        # The declared outputs appear only when training is complete (the running log and the
        # checkpoint are not outputs, so a failed job's cleanup never deletes them).
        with atomic_path(out / "metrics.csv") as tmp:
            shutil.copyfile(out / "train_log.csv", tmp)
        _save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
               "model_config": dataclasses.asdict(model.config), **info}, out / "model.pt")
        # the card holds the dataset's checksums; the other inputs are set per task (voxel tasks have no coords)
        inputs = [Path(cfg.dataset) / "dataset_card.json",
                  *(p for p in (cfg.coords, cfg.participants, cfg.init_from) if p)]
        for artefact in (out / "metrics.csv", out / "model.pt"):
            write_sidecar(artefact, "pretrain", inputs, parameters=dataclasses.asdict(cfg))
    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, task: Task, cfg: TrainConfig, ddp: Dist, bf16: bool, max_batches: int = 8) -> float:
    """The task's loss on the validation split with fixed masking noise (the same every evaluation)."""
    dataset = task.val_set
    if len(dataset) == 0:
        return float("nan")
    from torch.utils.data import default_collate

    model.eval()
    losses = []
    for b in range(min(max_batches, math.ceil(len(dataset) / cfg.batch_size))):
        idx = range(b * cfg.batch_size, min(len(dataset), (b + 1) * cfg.batch_size))
        batch = _to_device(default_collate([dataset[i] for i in idx]), ddp.device)
        n_noise = task.n_noise(batch["x"])
        noise = mask_noise(cfg.seed + 1, b, len(idx), n_noise, ddp.device) if n_noise else None
        with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses.append(task.loss(model, batch, noise).float())
    model.train()
    return float(torch.stack(losses).mean())


# TrainConfig fields that say where or how fast a run goes, not what it computes: a checkpoint
# made under other values of these is still this run's
NOT_SHAPING = frozenset({"out", "checkpoint_every", "eval_every", "log_every", "num_workers", "compile"})


def run_inputs(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the files a run learns from: the dataset card (which lists its inputs' sha256,
    splits and scaling), the coordinates, the participants table and the initial model."""
    from ..io import sha256sum

    files = {"dataset_card": str(Path(cfg.dataset) / "dataset_card.json"), "coords": cfg.coords,
             "participants": cfg.participants, "init_from": cfg.init_from}
    return {key: sha256sum(path) for key, path in files.items() if path and Path(path).is_file()}


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
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
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


class _Metrics:
    """Metrics to CSV (always) and TensorBoard (when installed), rank 0 only."""

    FIELDS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "samples_per_s")

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.enabled = enabled
        if not enabled:
            return
        if path.exists():  # keep the rows up to the checkpoint we resume from
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
        else:
            rows = []
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.path = path
        self.tb = None
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=resume_step + 1)

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.FIELDS).writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()


def main(argv: list[str] | None = None) -> int:
    cfg = TrainConfig.from_args(argv)
    result = train(cfg)
    if result["interrupted"]:
        print(f"fmriflow-train: interrupted at step {result['step']}; checkpoint written, rerun to continue", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
