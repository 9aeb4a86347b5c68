"""One set-up's fold units (``crossval.fold_units``) over a pool of worker processes.

Each unit (a variant, one permuted control, the baselines of one fold) runs on one CPU
thread, in its own process when ``workers`` > 1, and hands back what it recorded: subject
scores, training-log rows, attribution rows and its log lines. The parent records them in
the fixed order of the units, so the tables are identical whatever the number of workers
(every fit seeds itself; one thread keeps float reductions in one order). On the CPU one
process per core beats one process with as many torch threads: the fits are small (a few
windows, a narrow ResNet), and threads of one op mostly wait on each other
(``benchmarks/finetune_throughput.py`` measures both). On a CUDA device the workers share the
GPU, each with its own CUDA context: one small fit leaves most of a GPU idle. A CUDA context
does not survive a fork, so they are forked only while the calling process has made none (the
finetune job never does); otherwise the units run in the calling process, one after another.

Workers are forked on Linux, inheriting the loaded features (no copy, no re-read), and
die with the parent (PR_SET_PDEATHSIG); elsewhere they are spawned.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from typing import Any, Iterator

import torch

from ..progress import progress
from .crossval import Fold, Inputs, Results, Unit, run_unit
from .ig_tables import IGTables
from .settings import FinetuneSettings

log = logging.getLogger(__name__)
_STATE: dict[str, Any] = {}  # a worker's inputs, settings and attribution tables


def unit_name(fold: Fold, unit: Unit) -> str:
    what = {"variants": lambda: "+".join(unit[1]), "control": lambda: f"permuted concat {unit[1]}",
            "recipe": lambda: f"{unit[2]}_{unit[1]}", "recipe_control": lambda: f"permuted concat_{unit[1]} {unit[2]}",
            "probe": lambda: "frozen probes"}.get(unit[0], lambda: unit[0])()
    return f"repeat {fold.repeat} fold {fold.index}: {what}"


def run_units(tasks: list[tuple[Fold, Unit]], inputs: Inputs, settings: FinetuneSettings, results: Results,
              attribution: IGTables, workers: int = 1, desc: str = "fine-tuning") -> None:
    """Run every (fold, unit) of ``tasks``; record into ``results`` and ``attribution`` in task order."""
    workers = max(1, min(workers, len(tasks)))
    if workers > 1 and settings.train.device != "cpu" and not _gpu_can_fork():
        log.warning("finetune.workers %d: this process already holds a CUDA context, which a forked worker cannot "
                    "use; the units run one after another here", workers)
        workers = 1
    outputs: list[tuple | None] = [None] * len(tasks)
    bar = progress(total=len(tasks), desc=desc, unit="fit")
    with _one_thread(settings.train.device), bar:
        for i, output in _completed(tasks, inputs, settings, attribution, workers):
            outputs[i] = output
            bar.update(1)
            log.info("%s: done in %.0f s", unit_name(*tasks[i]), output[-1])
    for preds, logs, rows, regions, text, _ in outputs:
        results.preds += preds
        results.logs += logs
        attribution.rows += rows
        attribution.regions += regions
        if text:
            log.info("%s", text.rstrip())


def _gpu_can_fork() -> bool:
    """Workers forked now may each open their own CUDA context (Linux fork, none open here yet)."""
    return sys.platform.startswith("linux") and "fork" in get_all_start_methods() and not torch.cuda.is_initialized()


def _completed(tasks, inputs, settings, attribution, workers) -> Iterator[tuple[int, tuple]]:
    """(task index, output) as each task finishes: in the calling process, or over a pool."""
    if workers == 1:
        _init(inputs, settings, attribution, None)
        for i, task in enumerate(tasks):
            yield i, _run(task)
        return
    for stream in (sys.stdout, sys.stderr):  # a forked worker must not inherit unwritten output
        stream.flush()
    method = "fork" if sys.platform.startswith("linux") and "fork" in get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_init,
                               initargs=(inputs, settings, attribution, os.getpid()))
    try:
        pending = {pool.submit(_run, task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init(inputs: Inputs, settings: FinetuneSettings, attribution: IGTables, parent: int | None) -> None:
    """A worker's (or, with ``parent`` None, the calling process's) inputs."""
    if parent is not None:
        _die_with(parent)
        torch.set_num_threads(1)
        for handler in list(logging.getLogger().handlers):  # a forked copy of the job log's handler
            logging.getLogger().removeHandler(handler)
    if settings.train.device != "cpu":
        _deterministic_cuda()
    _STATE.update(inputs=inputs, settings=settings, attribution=attribution, worker=parent is not None)


def _deterministic_cuda() -> None:
    """The same fits on a GPU whatever the number of workers or the run: deterministic kernels.

    cuBLAS needs its workspace size fixed before its first call (the worker's, or this process's);
    an op with no deterministic kernel warns instead of failing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _die_with(parent: int) -> None:
    """A worker ends when its parent does, whatever ends the parent (Linux; elsewhere the pool's pipe breaks)."""
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
            os._exit(1)  # PR_SET_PDEATHSIG above; the parent had already ended


def _run(task: tuple[Fold, Unit]) -> tuple:
    """One unit with fresh recorders: (preds, logs, attribution rows, regions, log text, seconds)."""
    fold, unit = task
    inputs, settings, attribution = _STATE["inputs"], _STATE["settings"], _STATE["attribution"]
    results = Results(inputs.cohort)
    kept = attribution.rows, attribution.regions
    attribution.rows, attribution.regions = [], []
    started = time.monotonic()
    try:
        with _captured(_STATE["worker"]) as text:
            run_unit(unit, fold, inputs, settings, results, attribution.add if attribution.enabled else None)
        rows, regions = attribution.rows, attribution.regions
    finally:
        attribution.rows, attribution.regions = kept
    return results.preds, results.logs, rows, regions, text.getvalue(), time.monotonic() - started


@contextlib.contextmanager
def _captured(worker: bool) -> Iterator[io.StringIO]:
    """A worker's warnings, log records and prints as text, for the parent to write to the job's log.

    In the calling process they already go to the log: nothing is captured.
    """
    text = io.StringIO()
    if not worker:
        yield text
        return
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)  # a unit's info lines are the parent's 'done' line
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield text
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def _one_thread(device: str) -> Iterator[None]:
    """One torch thread in the calling process too (CPU): the same float results as the workers."""
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
