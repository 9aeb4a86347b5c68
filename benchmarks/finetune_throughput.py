"""Fine-tuning throughput, CPU and GPU side by side: subjects x variants per second.

Builds a self-contained synthetic cohort in a temporary folder (region windows with a planted
FC difference between the two classes, an atlas table, a random tiny BrainLM as the
"pretrained" encoder), computes the cached features with the pipeline's own
``features_step``, then runs one whole set-up (``setup_step``, the drug-agnostic set-up:
k-fold CV of every FMMTC variant, the FC baselines, the permuted-label controls and the
integrated gradients of concat) once per case:

``cpu x1``     one worker process, one torch thread
``cpu xN``     N worker processes (``--workers``, default: every core up to 16), one thread each
``cuda xN``    N worker processes sharing the GPU (when there is one), each with its own CUDA context
``cuda x1``    the GPU, the units one after another in this process

and prints each case's wall seconds, its throughput (subjects x variants / s, where the
variants are the deep variants and baselines scored on every subject; the controls and
attribution are part of the work timed) and the ratios. The cases must write identical
tables (CPU cases: byte for byte, checked); the GPU cases' floats differ from the CPU's, and the
script prints the largest score difference between the two GPU cases.
A first section times one ``concat`` fit with 1 and with N torch threads in one process: the
alternative to worker processes.

    python benchmarks/finetune_throughput.py [--subjects 24] [--width 4] [--workers N] [--no-serial]

About a minute on a GPU machine with the defaults; ``--no-serial`` skips ``cpu x1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmriflow.datasets.regions import REGION_MASK, SAMPLES
from fmriflow.finetune import crossval
from fmriflow.finetune.run import features_step, setup_step
from fmriflow.finetune.settings import FinetuneSettings, TrainSettings
from fmriflow.finetune.trainer import fit
from fmriflow.models.brainlm import CONFIGS, BrainLM

REGIONS, TRS = 424, 200
VARIANTS = ("concat", "sum", "cross_attention", "moe", "ts_only", "fc_only", "no_pretrain")


def write_cohort(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """Dataset folder, participants.tsv, atlas table and model.pt of a synthetic cohort."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    planted = rng.choice(REGIONS, 20, replace=False)  # responders: these regions share a signal
    windows = rng.standard_normal((n, REGIONS, TRS)).astype(np.float32)
    for i in np.flatnonzero(labels):
        windows[i][planted] += rng.standard_normal(TRS).astype(np.float32)
    dataset = root / "dataset"
    dataset.mkdir()
    np.save(dataset / SAMPLES, windows)
    np.save(dataset / REGION_MASK, np.ones((n, REGIONS), dtype=bool))
    subjects = [f"{i:03d}" for i in range(n)]
    pd.DataFrame({"sample": np.arange(n), "run": [f"sub-{s}_task-rest" for s in subjects], "subject": subjects,
                  "split": "train", "start_tr": 0, "tr": 2.0}).to_csv(dataset / "index.tsv", sep="\t", index=False)
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "response": labels}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    xyz = rng.uniform(-60, 60, (REGIONS, 3)).astype(np.float32)
    pd.DataFrame({"index": np.arange(1, REGIONS + 1), "name": [f"region{i}" for i in range(1, REGIONS + 1)],
                  "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(root / "atlas.tsv", sep="\t", index=False)
    torch.manual_seed(seed)
    model = BrainLM(CONFIGS["tiny"], xyz)
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(model.config)}, root / "model.pt")
    return {"dataset": str(dataset), "participants": str(root / "participants.tsv"), "coords": str(root / "atlas.tsv"),
            "model": str(root / "model.pt"), "features": str(root / "features")}


def settings(args, device: str) -> FinetuneSettings:
    """The demo's recipe (config/demo.yaml), on ``device``."""
    train = TrainSettings(device=device, resnet_width=args.width, batch_size=4, max_epochs=args.epochs,
                          min_epochs=min(15, args.epochs), patience=5)
    return FinetuneSettings(target="response", folds=5, repeats=1, variants=VARIANTS, ig_steps=args.ig_steps,
                            permutations=5, bootstrap=100, train=train)


def run_case(paths: dict, args, device: str, workers: int, out: Path) -> float:
    start = time.perf_counter()
    setup_step("agnostic", paths["dataset"], paths["features"], paths["participants"], paths["model"],
               paths["coords"], str(out), settings(args, device), workers=workers)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def read_scores(out: Path) -> np.ndarray:
    """The predictions table's scores in a fixed row order."""
    preds = pd.read_csv(out / "predictions.tsv", sep="\t", dtype={"subject": str})
    return preds.sort_values([c for c in preds.columns if c != "score"])["score"].to_numpy(float)


def fit_seconds(paths: dict, args, threads: int) -> float:
    """One concat fit of the first fold, in this process, with ``threads`` torch threads."""
    s = settings(args, "cpu")
    inputs = crossval.load_inputs(paths["dataset"], paths["features"], paths["participants"], s)
    subjects = sorted(inputs.rows_of)
    fold = crossval.make_fold(inputs, "agnostic", 0, 0, 0, subjects[len(subjects) // 5:], subjects[:len(subjects) // 5],
                              s.val_fraction)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        fit("concat", "classification", inputs.ts["pretrained"], inputs.fc, inputs.y, fold.fit_rows, fold.val_rows,
            s.train, seed=0)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--width", type=int, default=4, help="ResNet-18 width (4: the demo's; 64: the paper's)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--no-serial", action="store_true", help="skip the one-worker CPU case")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU cases (and their score difference)")
    args = parser.parse_args()
    os.environ.setdefault("FMRIFLOW_PROGRESS", "0")
    # ask NVML, not the CUDA runtime, whether there is a GPU: the runtime's answer opens the driver
    # in this process, and workers forked after that fail at their first CUDA call
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_cohort(root, args.subjects)
        features_step(paths["dataset"], paths["model"], paths["coords"], paths["features"])
        print(f"{args.subjects} subjects, 1 window of {REGIONS} x {TRS} each; 5 folds x ({len(VARIANTS)} variants "
              f"+ 5 permuted concat + 2 baselines), IG ({args.ig_steps} steps) of concat; ResNet width {args.width}, "
              f"{args.epochs} epochs; {os.cpu_count()} CPUs, torch {torch.__version__}")
        # forked cases before cuda x1: that one opens a CUDA context in this process, which workers forked
        # after it could not use
        cases = ([] if args.no_serial else [("cpu", 1)]) + [("cpu", args.workers), ("cuda", args.workers), ("cuda", 1)]
        cases = [c for c in cases if c[0] == "cuda"] if args.gpu_only else cases
        rows = []
        for device, workers in cases:
            if device == "cuda" and not torch.cuda.is_available():
                continue
            out = root / f"{device}-{workers}"
            seconds = run_case(paths, args, device, workers, out)
            rate = args.subjects * (len(VARIANTS) + 2) / seconds
            rows.append({"case": f"{device} x{workers}", "seconds": seconds, "subjects_x_variants_per_s": rate,
                         "out": out})
            print(f"  {rows[-1]['case']:10s} {seconds:8.1f} s  {rate:8.2f} subjects x variants / s", flush=True)
        cpu = [r for r in rows if r["case"].startswith("cpu")]
        for r in cpu[1:]:
            same = all((r["out"] / f).read_bytes() == (cpu[0]["out"] / f).read_bytes()
                       for f in ("predictions.tsv", "metrics.tsv", "attribution_regions.tsv"))
            print(f"{r['case']} vs {cpu[0]['case']}: {cpu[0]['seconds'] / r['seconds']:.2f}x faster, "
                  f"tables {'identical' if same else 'DIFFERENT'}")
        # after the worker cases: a backward pass in this process before it forks workers breaks
        # theirs on a machine with a GPU (torch's autograd threads do not survive fork)
        if cpu:
            one, many = fit_seconds(paths, args, 1), fit_seconds(paths, args, args.workers)
            print(f"one concat fit in one process: {one:.2f} s with 1 torch thread, {many:.2f} s with {args.workers} "
                  f"({one / many:.2f}x for {args.workers}x the cores)")
        gpu = [r for r in rows if r["case"].startswith("cuda")]
        for r in gpu if cpu else []:
            best = min(cpu, key=lambda c: c["seconds"])
            print(f"{r['case']} vs {best['case']}: {best['seconds'] / r['seconds']:.2f}x")
        if len(gpu) == 2:
            a, b = (read_scores(r["out"]) for r in gpu)
            print(f"{gpu[0]['case']} vs {gpu[1]['case']}: {gpu[1]['seconds'] / gpu[0]['seconds']:.2f}x faster, "
                  f"largest score difference {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
