"""Training-step timing shared by the step benchmarks (brainsymphony_step.py, text_step_time.py).

A benchmark script run as ``python benchmarks/NAME.py`` has this folder on its path, so it
imports this module by name.
"""

from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device,
               bf16: bool) -> Callable[[], None]:
    """One forward + backward + AdamW step of ``loss_fn`` (bf16 autocast when asked)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> tuple[float, float, float]:
    """Seconds per step after ``warmup`` untimed steps; the GPU's peak allocated bytes over the timed steps
    (0 on CPU); the growth of the process's peak resident memory over them, in bytes (Linux: ru_maxrss in KiB)."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    gpu = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0.0
    return seconds, gpu, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024.0
