"""What each step sees, as pure functions of (seed, step): the sample indices of a global batch
(``global_batches``), this rank's share of them (``RankBatches``) and the masking noise
(``mask_noise``). Exact resumption rests on these: a resumed run recomputes them, it replays nothing.
``check_batch_size`` refuses a global batch the training split or the processes cannot make."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import InputError
from .config import CONFIG_SECTION, TrainConfig
from .distributed import Dist


def check_batch_size(cfg: TrainConfig, n_samples: int, world: int) -> None:
    """Refuse ``cfg.batch_size`` unless ``world`` processes can draw it from ``n_samples`` training samples.

    Called before any DataLoader (and its worker processes) exists; the error names the setting
    as the command line and the workflow config spell it.
    """
    setting = f"--batch-size (config {CONFIG_SECTION[cfg.task]}.batch_size)"
    if n_samples == 0:
        raise InputError(cfg.dataset, f"the training split has no samples, so {setting} {cfg.batch_size} "
                         "cannot be drawn; check the dataset's splits (and --window for voxel tasks)")
    if not 1 <= cfg.batch_size <= n_samples:
        raise InputError(None, f"{setting} must be between 1 and the {n_samples} training samples of "
                         f"{cfg.dataset}; {cfg.batch_size} was provided")
    if cfg.batch_size % world:
        raise InputError(None, f"{setting} must be divisible by the {world} training processes (each takes an "
                         f"equal share); {cfg.batch_size} was provided")


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


class RankBatches:
    """This rank's share of each global batch from ``start_step`` on, for a DataLoader's batch_sampler."""

    def __init__(self, n_samples: int, cfg: "TrainConfig", ddp: "Dist", start_step: int):
        check_batch_size(cfg, n_samples, ddp.world)  # here, not when a worker-started loader first draws
        self.n_samples, self.cfg, self.ddp, self.start = n_samples, cfg, ddp, start_step

    def __iter__(self):
        local = self.cfg.batch_size // self.ddp.world
        for step, indices in global_batches(self.n_samples, self.cfg.batch_size, self.cfg.seed, self.start):
            if step >= self.cfg.max_steps:
                return
            yield indices[self.ddp.rank * local:(self.ddp.rank + 1) * local].tolist()

    def __len__(self) -> int:
        return max(0, self.cfg.max_steps - self.start)
