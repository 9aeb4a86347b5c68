"""Training of fmriflow's models: one loop for every model family (a *task*).

Tasks (``--task``): ``brainlm`` pretrains the region-level masked autoencoder (the default);
``neurostorm-mae`` pretrains NeuroSTORM on 4-D windows; ``brainmt`` trains BrainMT on a
participants.tsv column; ``neurostorm`` prompt-tunes a pretrained NeuroSTORM on one;
``vq-align`` and ``lm-finetune`` align fMRI tokens with text and train a language model on them
(``fmriflow.training.tasks`` builds each). A task supplies the model, the train and
validation datasets, the loss of a batch and how much masking noise a batch needs, and
optionally a per-step hook (schedules), more validation metrics and more final outputs; the
loop below is shared.

One entry point for one process, several GPUs (``torchrun --nproc-per-node N``) and several
nodes (``srun torchrun ...``): DDP starts when ``torchrun`` sets ``RANK``. Training is exactly
resumable: the checkpoint holds model, optimiser, scheduler, step and RNG states, and the data
order and masks are functions of (seed, step), so a run stopped at any checkpoint and resumed
follows the same trajectory as an uninterrupted one. SIGTERM / SIGUSR1 (SLURM's warning before
a time limit or preemption) write a checkpoint and stop; rerunning the same command continues.
A run that cannot reach a step boundary stops at once instead: a signal before the first step or
after the last, or a second signal, ends it without a checkpoint (exit status 128 + signal), and
an error ends it with the error; either way its DataLoader workers end with it.

    python -m fmriflow.train --dataset DIR --coords LUT.tsv --out DIR [--model tiny] [--max-steps N] ...
    python -m fmriflow.train --task brainmt --dataset VOXELS --participants participants.tsv --target age \
        --target-kind regression --out DIR --model tiny --window 20 ...
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import functools
import math
import multiprocessing
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

from ..errors import InputError
from ..io import atomic_path
from ..progress import progress
from ..provenance import write_sidecar
from .checkpoint import CHECKPOINT, init_files, load_checkpoint, run_inputs, save_checkpoint, save_model
from .config import SIDECAR_STEP, Task, TrainConfig
from .distributed import Dist, setup_distributed
from .sampling import RankBatches, check_batch_size, mask_noise
from .symphony import sc_files
from .tasks import build_task


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the training process.

    torchrun signals each rank's whole process group; a worker killed by it would crash
    the rank's next batch fetch before the checkpoint is written.
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _start_worker(parent: int, worker_id: int) -> None:
    """A DataLoader worker's set-up: stop signals left to the training process, and death with it.

    A worker ignores SIGTERM, so only its parent can end it. torch's worker watchdog notices a dead
    parent only between batches; on Linux the kernel also kills the worker the moment its parent
    ends (PR_SET_PDEATHSIG), even one busy in a slow read.
    """
    _ignore_stop_signals(worker_id)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0 \
                and os.getppid() != parent:  # the parent ended before the request was made
            os._exit(1)


class StopNow(BaseException):
    """A stop signal that cannot wait for a step boundary; like KeyboardInterrupt, not an ``Exception``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _Stop:
    """SIGTERM / SIGUSR1 handling for the time a run holds them.

    While the loop runs (``stepping``), the first signal is a request: the loop checkpoints and
    exits at the next step boundary. A signal outside the loop, or a second one, means the
    boundary may never come (the process waits on a stuck worker, a peer, a read): ``StopNow``
    is raised at once, and the loop's clean-up ends the workers. ``restore`` gives the signals
    back to the handlers from before.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum: int | None = None
        self.stepping = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None or not self.stepping:
            raise StopNow(signum)
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _agreed(interrupted: bool, ddp: Dist) -> bool:
    """Whether any rank stops: every rank must agree to stop at the same step."""
    if ddp.world > 1:
        flag = torch.tensor(float(interrupted), device=ddp.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        interrupted = bool(flag.item())
    return interrupted


@dataclass
class _Run:
    """What the steps of a run share: its config, processes, task, and the optimisation of the model."""

    cfg: TrainConfig
    ddp: Dist
    task: Task
    model: torch.nn.Module  # on this rank's device, not wrapped (DDP, compile): what checkpoints hold
    params: list[torch.nn.Parameter]  # the trainable ones
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    bf16: bool
    info: dict[str, Any]  # entries of model.pt besides model, config and model_config


def train(cfg: TrainConfig, should_stop: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """Train (or resume) to ``cfg.max_steps``; ``should_stop(step)`` acts like a signal (tests, budgets)."""
    ddp = setup_distributed()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # every RNG the checkpoint records is seeded, so a rerun writes byte-identical checkpoints
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    check_batch_size(cfg, len(task.train_set), ddp.world)  # before any loader starts a worker
    run = _set_up(cfg, ddp, task)
    checkpoint, inputs = out / CHECKPOINT, run_inputs(cfg)
    step = load_checkpoint(checkpoint, cfg, inputs, ddp, run.model, run.optimizer, run.scheduler)
    trainable = _wrap(run.model, cfg, ddp)
    stop = _Stop()
    # steps done, the time left and the last training loss; rank 0 only, a line at most every
    # fmriflow.progress.LOG_INTERVAL seconds in a log (the metrics go to train_log.csv)
    bar = progress(total=cfg.max_steps, initial=step, desc=f"{cfg.task} training", unit="step", disable=not ddp.master)
    try:
        metrics = _Metrics(out / "train_log.csv", ddp.master, resume_step=step, extra=run.task.metric_fields)
        train_loss = _TrainLoss(ddp.device)
        n_noise = None

        if step == 0:  # the untrained model's validation loss: the baseline the curve starts from
            metrics.write(step=0, val_loss=evaluate(run.model, run.task, cfg, ddp, run.bf16), **_task_metrics(run))
        with _batches(_loader(run.task.train_set, cfg, ddp, step)) as batches:
            stop.stepping = True
            for batch in batches:
                batch = _to_device(batch, ddp.device)
                if n_noise is None:
                    n_noise = run.task.n_noise(batch["x"])
                loss, grad_norm = _step(run, trainable, batch, step, n_noise)
                train_loss.add(loss, cfg.batch_size)
                step += 1
                bar.update()

                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    mean = train_loss.write(metrics, step, cfg, ddp, lr=run.scheduler.get_last_lr()[0], grad_norm=grad_norm)
                    bar.set_postfix_str(f"train loss {mean:.4g}", refresh=False)
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    metrics.write(step=step, val_loss=evaluate(run.model, run.task, cfg, ddp, run.bf16), **_task_metrics(run))
                interrupted = _agreed(stop.signum is not None or (should_stop is not None and should_stop(step)), ddp)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or interrupted:
                    save_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler, step, cfg, ddp, inputs=inputs)
                if interrupted:
                    break
        stop.stepping = False

        result = {"step": step, "interrupted": step < cfg.max_steps}
        if ddp.master and step >= cfg.max_steps:
            _save_outputs(out, run)
        if ddp.world > 1:
            dist.barrier()
            dist.destroy_process_group()
    finally:
        bar.close()
        stop.restore()
    return result


def _set_up(cfg: TrainConfig, ddp: Dist, task: Task) -> _Run:
    """The task's model on this rank's device with its optimiser; rank 0 says what runs."""
    from ..models.ssm import backend_of

    model = task.model.to(ddp.device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and ddp.device.type == "cuda")
    params, optimizer, scheduler = _optimizer(model, cfg, ddp)
    info = {"task": cfg.task, "model_name": cfg.model, "mamba_backend": backend_of(model), **task.info}
    if ddp.master:
        print(f"fmriflow-train: task {cfg.task}, model {cfg.model}, {sum(p.numel() for p in model.parameters())} "
              f"parameters ({sum(p.numel() for p in params)} trainable), Mamba path {info['mamba_backend']}, "
              f"{ddp.world} process(es) on {ddp.device.type}, {'bf16' if bf16 else 'fp32'}", file=sys.stderr)
    return _Run(cfg, ddp, task, model, params, optimizer, scheduler, bf16, info)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, ddp: Dist) -> tuple[list, torch.optim.Optimizer, Any]:
    """The trainable parameters, AdamW over them and its learning-rate schedule (``lr_at``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # matrices decay; biases, norms and what a model marks (_no_weight_decay: SSM A_log and D, embeddings) do not;
    # a model may mark parameters with _lr_scale (an adversary's faster learning rate: vq-align's classifier)
    groups: dict[tuple[bool, float], list] = {}
    for p in params:
        decays = p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)
        groups.setdefault((decays, float(getattr(p, "_lr_scale", 1.0))), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": group, "weight_decay": cfg.weight_decay if decays else 0.0, "lr": cfg.lr * scale}
         for (decays, scale), group in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))],
        lr=cfg.lr, betas=cfg.betas, fused=ddp.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    return params, optimizer, scheduler


def _wrap(model: torch.nn.Module, cfg: TrainConfig, ddp: Dist) -> torch.nn.Module:
    """What the step calls: the model, in DDP when there are several processes, compiled if asked."""
    trainable = DistributedDataParallel(model, device_ids=[ddp.local_rank] if ddp.device.type == "cuda" else None) if ddp.world > 1 else model
    if cfg.compile:
        trainable = torch.compile(trainable, dynamic=False)  # dynamic shapes broke inductor backward (torch 2.11)
    return trainable


def _loader(dataset: torch.utils.data.Dataset, cfg: TrainConfig, ddp: Dist, step: int) -> torch.utils.data.DataLoader:
    """This rank's batches from ``step`` to ``cfg.max_steps``."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=RankBatches(len(dataset), cfg, ddp, step), num_workers=cfg.num_workers,
        pin_memory=ddp.device.type == "cuda", persistent_workers=False,
        worker_init_fn=functools.partial(_start_worker, os.getpid()),
    )


@contextlib.contextmanager
def _batches(loader: torch.utils.data.DataLoader) -> Iterator[Iterator[dict]]:
    """The loader's batches; its worker processes end with the loop, however the loop ends.

    On an error or ``StopNow`` the workers are killed before the exception goes on: they hold
    nothing to save, and they ignore SIGTERM, so the interpreter's exit (which terminates and
    then joins its daemonic children) would wait on them forever. A worker started by a loader
    whose start failed is among them: the children started here, not the iterator, are killed.
    Otherwise torch shuts them down as usual: told to stop, then joined.
    """
    before = set(multiprocessing.active_children())
    batches = None
    try:
        batches = iter(loader)
        yield batches
        _shut_down(batches)
    except BaseException:
        # torch's SIGCHLD handler would take the kill for a crash and raise over the exception on its way
        sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            for worker in set(multiprocessing.active_children()) - before:
                worker.kill()
                worker.join()
            _shut_down(batches)
        finally:
            signal.signal(signal.SIGCHLD, sigchld)
        raise


def _shut_down(batches: Iterator[dict] | None) -> None:
    """End a DataLoader iterator's workers and free its queues (torch's own shut-down; none without workers)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _step(run: _Run, trainable: torch.nn.Module, batch: dict, step: int, n_noise: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on this rank's share of global batch ``step``; (loss, gradient norm)."""
    cfg, ddp = run.cfg, run.ddp
    local = cfg.batch_size // ddp.world
    if run.task.before_step is not None:
        run.task.before_step(run.model, batch, step)
    noise = None
    if n_noise:
        noise = mask_noise(cfg.seed, step, cfg.batch_size, n_noise, ddp.device)[ddp.rank * local:(ddp.rank + 1) * local]
    with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        loss = run.task.loss(trainable, batch, noise)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def _save_outputs(out: Path, run: _Run) -> None:
    """metrics.csv and model.pt, each with its provenance sidecar."""
    cfg = run.cfg
    # The declared outputs appear only when training is complete (the running log and the
    # checkpoint are not outputs, so a failed job's cleanup never deletes them).
    with atomic_path(out / "metrics.csv") as tmp:
        shutil.copyfile(out / "train_log.csv", tmp)
    save_model(out / "model.pt", run.model, cfg, run.info)
    more = run.task.finish(run.model, out) if run.task.finish is not None else []
    # the card holds the dataset's checksums; the other inputs are set per task (voxel tasks have no coords)
    inputs = [Path(cfg.dataset) / "dataset_card.json", *(p for p in (cfg.coords, cfg.participants) if p),
              *init_files(cfg), *sc_files(cfg)]
    for artefact in (out / "metrics.csv", out / "model.pt", *map(Path, more)):
        write_sidecar(artefact, SIDECAR_STEP[cfg.task], inputs, parameters=dataclasses.asdict(cfg))


def _task_metrics(run: _Run) -> dict[str, float]:
    """The task's own validation metrics (rank 0 writes them; every rank computes them alike)."""
    if run.task.metrics is None:
        return {}
    run.model.eval()
    try:
        with torch.no_grad():
            return run.task.metrics(run.model)
    finally:
        run.model.train()


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


class _TrainLoss:
    """The training loss since the last log row, summed on the device (the host syncs only when a row is written)."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), device=device)
        self.t0, self.seen = time.perf_counter(), 0

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.sum += loss.detach()
        self.seen += samples

    def write(self, metrics: "_Metrics", step: int, cfg: TrainConfig, ddp: Dist, lr: float, grad_norm: torch.Tensor) -> float:
        """A row of the mean loss over all ranks, the learning rate, gradient norm and throughput; then restart.

        Returns the row's mean loss."""
        if ddp.world > 1:
            dist.all_reduce(self.sum, op=dist.ReduceOp.AVG)
        elapsed = time.perf_counter() - self.t0
        n_logged = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
        mean = self.sum.item() / n_logged
        metrics.write(step=step, train_loss=mean, lr=lr, grad_norm=float(grad_norm), samples_per_s=self.seen / elapsed)
        self.sum.zero_()
        self.t0, self.seen = time.perf_counter(), 0
        return mean


class _Metrics:
    """Metrics to CSV (always) and TensorBoard (when installed), rank 0 only."""

    FIELDS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "samples_per_s")

    def __init__(self, path: Path, enabled: bool, resume_step: int, extra: tuple[str, ...] = ()):
        self.enabled = enabled
        self.fields = (*self.FIELDS, *extra)
        if not enabled:
            return
        if path.exists():  # keep the rows up to the checkpoint we resume from
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
        else:
            rows = []
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
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
            csv.DictWriter(fh, self.fields).writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()


def main(argv: list[str] | None = None) -> int:
    cfg = TrainConfig.from_args(argv, description=__doc__)
    try:
        result = train(cfg)
    except InputError as exc:  # a setting or input the run cannot use: the message says which
        print(f"fmriflow-train: error: {exc}", file=sys.stderr)
        return 1
    except StopNow as exc:
        print(f"fmriflow-train: {exc} before a step boundary; no checkpoint written for the steps since the last",
              file=sys.stderr)
        return 128 + exc.signum
    if result["interrupted"]:
        print(f"fmriflow-train: interrupted at step {result['step']}; checkpoint written, rerun to continue", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
