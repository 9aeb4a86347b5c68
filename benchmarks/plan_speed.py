"""Dry-run speed at thousands of subjects: fmriflow against a bare 5-rule workflow, side by side.

For each N, writes a synthetic BIDS dataset and fMRIPrep derivatives of N subjects (one
rest run each; empty image files: planning reads names and sidecars, never image data),
then times in subprocesses, one after the other in the same run:

- ``fmriflow``: ``snakemake --profile profiles/local -n --quiet`` of this repository's
  workflow (derivatives mode, the demo's settings) on that dataset;
- ``bare``: the same command on a workflow of 5 chained rules x N subjects (shell rules,
  one input each), the floor Snakemake itself sets;
- ``startup`` (``--startup``): what each cluster job pays before it runs: reading the workflow
  and planning its one target (a dry run of the first run's denoised BOLD, whose plan has its
  preprocessing check, resampling and denoising: a job on SLURM reads the Snakefile the same way).

CPU time (user + system of the child processes) is the figure; wall time is printed beside.

    PYTHONPATH=src python benchmarks/plan_speed.py [--subjects 50 300 1000 2000] [--startup] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = "space-MNI152NLin6Asym_res-2"

BARE = """
N = {n}
SUBJECTS = [f"{{i:05d}}" for i in range(N)]

rule all:
    input: expand("out/sub-{{s}}/e.txt", s=SUBJECTS)

rule a:
    input: "{bids}/sub-{{s}}/func/sub-{{s}}_task-rest_bold.nii.gz"
    output: "out/sub-{{s}}/a.txt"
    shell: "touch {{output}}"

rule b:
    input: "out/sub-{{s}}/a.txt"
    output: "out/sub-{{s}}/b.txt"
    shell: "touch {{output}}"

rule c:
    input: "out/sub-{{s}}/b.txt"
    output: "out/sub-{{s}}/c.txt"
    shell: "touch {{output}}"

rule d:
    input: "out/sub-{{s}}/c.txt"
    output: "out/sub-{{s}}/d.txt"
    shell: "touch {{output}}"

rule e:
    input: "out/sub-{{s}}/d.txt"
    output: "out/sub-{{s}}/e.txt"
    shell: "touch {{output}}"
"""


def write_dataset(root: Path, n: int) -> None:
    """N subjects, one rest run each, raw and fMRIPrep-shaped, with the demo's participants columns."""
    bids, deriv = root / "bids", root / "derivatives" / "fmriprep"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "plan speed", "BIDSVersion": "1.10.0"}))
    (bids / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}))
    rows = ["participant_id\tresponse\tdrug\tsite"]
    for i in range(n):
        sub = f"sub-{i:05d}"
        rows.append(f"{sub}\t{i % 2}\t{'ab'[(i // 2) % 2]}\t{'s' + str(i % 3)}")
        func = bids / sub / "func"
        func.mkdir(parents=True)
        (func / f"{sub}_task-rest_bold.nii.gz").touch()
        (func / f"{sub}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        dfunc = deriv / sub / "func"
        dfunc.mkdir(parents=True)
        for name in (f"{SPACE}_desc-preproc_bold.nii.gz", f"{SPACE}_desc-brain_mask.nii.gz",
                     "desc-confounds_timeseries.tsv"):
            (dfunc / f"{sub}_task-rest_{name}").touch()
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(CPU seconds of the child, wall seconds, its output) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout + proc.stderr


def fmriflow_command(root: Path, *extra: str) -> list[str]:
    config = root / "config.yaml"
    config.write_text(json.dumps({
        "bids_dir": str(root / "bids"), "output_dir": str(root / "results"),
        "preproc": {"mode": "derivatives", "derivatives_dir": str(root / "derivatives" / "fmriprep")},
        "report": {"ground_truth": None},
        # the DAG of the earlier rows: pretraining in this project (config/demo.yaml now fine-tunes a
        # bundle that the demo's pretraining project writes first, absent here)
        "pretrain": {"enabled": True}, "finetune": {"encoder": None},
    }))
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile",
            str(REPO / "profiles/local"), "--configfile", str(REPO / "config/demo.yaml"), str(config),
            "--directory", str(root), *extra]


def measure(root: Path, n: int, startup: bool) -> dict:
    write_dataset(root, n)
    bare_dir = root / "bare"
    bare_dir.mkdir()
    (bare_dir / "Snakefile").write_text(BARE.format(n=n, bids=root / "bids"))
    row = {"n": n}
    cpu, wall, text = timed(fmriflow_command(root, "-n", "--quiet"), REPO)
    row.update(fmriflow_cpu=cpu, fmriflow_wall=wall)
    cpu, wall, _ = timed([sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles/local"), "-n",
                          "--quiet"], bare_dir)
    row.update(bare_cpu=cpu, bare_wall=wall)
    cpu, wall, text = timed(fmriflow_command(root, "-n"), REPO)  # the console output a user reads
    row.update(longest_line=max(map(len, text.splitlines())), output_mb=len(text) / 1e6,
               shell_none=text.count("Shell command: None"))
    if startup:
        target = root / "results/fmriflow/sub-00000/func/sub-00000_task-rest_space-MNI152NLin6Asym_res-2_desc-denoised_bold.nii.gz"
        row["startup_cpu"], _, _ = timed(fmriflow_command(root, "-n", "--quiet", "all", "--", str(target)), REPO)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[50, 300, 1000, 2000])
    parser.add_argument("--startup", action="store_true", help="also time reading the workflow (per-job start-up)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="plan_speed_", dir=args.workdir))
    print(f"load before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; datasets under {base}")
    header = (f"{'subjects':>8} {'fmriflow CPU s':>14} {'bare CPU s':>10} {'ratio':>6} {'wall s':>7} {'bare wall':>9}"
              f" {'start-up s':>10} {'longest line':>12} {'output MB':>9} {'Shell: None':>11}")
    rows = []
    for n in args.subjects:
        row = measure(base / f"n{n}", n, args.startup)
        rows.append(row)
        print(f"n={n}: {json.dumps(row)}", flush=True)
    print(header)
    for r in rows:
        startup = f"{r['startup_cpu']:10.2f}" if "startup_cpu" in r else f"{'-':>10}"
        print(f"{r['n']:>8} {r['fmriflow_cpu']:14.2f} {r['bare_cpu']:10.2f} {r['fmriflow_cpu'] / r['bare_cpu']:6.2f}"
              f" {r['fmriflow_wall']:7.2f} {r['bare_wall']:9.2f} {startup} {r['longest_line']:12d}"
              f" {r['output_mb']:9.2f} {r['shell_none']:11d}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
