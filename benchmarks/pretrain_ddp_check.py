"""End-to-end check of `fmriflow.train` on GPUs: torchrun, DDP over NCCL, bf16, checkpoint, resume.

Builds a synthetic region-window dataset (424 regions x 200 TRs, low-rank AR(1) signals),
trains with `torchrun --nproc-per-node N`, stops it half-way with SIGTERM, reruns the same
command to resume, and prints the step rate, the validation losses and the exit codes.

    python benchmarks/pretrain_ddp_check.py --gpus 2 --model brainlm-5m --steps 200
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_dataset(root: Path, n_subjects: int = 40, n_regions: int = 424, n_time: int = 600) -> tuple[Path, Path]:
    from fmriflow.datasets.regions import build_dataset, make_splits

    rng = np.random.default_rng(0)
    loading = 0.2 + 0.8 * rng.random((5, n_regions))
    runs = []
    for s in range(n_subjects):
        src = np.zeros((n_time, 5))
        for t in range(1, n_time):
            src[t] = 0.9 * src[t - 1] + np.sqrt(0.19) * rng.standard_normal(5)
        path = root / f"sub-{s:02d}.tsv"
        pd.DataFrame(src @ loading + 0.1 * rng.standard_normal((n_time, n_regions))).to_csv(path, sep="\t", index=False)
        runs.append({"run": f"sub-{s:02d}/func/sub-{s:02d}_task-rest", "subject": f"{s:02d}", "tr": 0.8, "timeseries": path})
    build_dataset(runs, make_splits([r["subject"] for r in runs], seed=0), root / "dataset", window=200, stride=50)
    coords = root / "coords.tsv"
    pd.DataFrame({"x": rng.uniform(-70, 70, n_regions), "y": rng.uniform(-100, 70, n_regions),
                  "z": rng.uniform(-50, 80, n_regions)}).to_csv(coords, sep="\t", index=False)
    return root / "dataset", coords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--model", default="brainlm-5m")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fmriflow-ddp-"))
    dataset, coords = make_dataset(root)
    out = root / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.gpus}",
           "-m", "fmriflow.train", f"--dataset={dataset}", f"--coords={coords}", f"--out={out}",
           f"--model={args.model}", f"--batch-size={args.batch}", f"--max-steps={args.steps}", "--warmup-steps=20",
           "--checkpoint-every=1000000", f"--eval-every={args.steps // 2}", "--log-every=10", "--num-workers=2",
           "--lr=1e-3"]
    start = time.perf_counter()
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "train_log.csv"
    def last_step() -> int:
        steps = pd.read_csv(log)["step"] if log.exists() else pd.Series(dtype=float)
        return int(steps.max()) if steps.notna().any() else -1

    while first.poll() is None and last_step() < args.steps // 3:
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to every rank
    _, err = first.communicate()
    stopped = time.perf_counter() - start
    import torch

    checkpoint_step = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    logged = int(pd.read_csv(log)["step"].max())
    print(f"first run: SIGTERM, exit {first.returncode} after {stopped:.1f} s; last logged step {logged}, "
          f"checkpoint written at step {checkpoint_step}")
    second = subprocess.run(cmd, capture_output=True, text=True)
    print(f"resumed run: exit {second.returncode}; {second.stderr.strip().splitlines()[-1:] if second.returncode else ''}")
    frame = pd.read_csv(log)
    print(frame.to_string(index=False))
    rate = frame["samples_per_s"].dropna()
    print(f"\n{args.model}, {args.gpus} GPUs, global batch {args.batch}: median {rate.median():.0f} samples/s; "
          f"val loss {frame['val_loss'].dropna().tolist()}; model.pt written: {(out / 'model.pt').exists()}")


if __name__ == "__main__":
    main()
