"""Every variant, baseline and control on a simulated multi-site cohort, through the real DAG.

    python benchmarks/cohort_benchmark.py [--subjects 1000] [--regions 100] [--volumes 200]
        [--work DIR] [--cores 2] [--device cpu|cuda] [--folds 5] [--max-epochs 50]
        [--setups agnostic site] [--permutations 5] [--variants ...] [--workers 2] [--quick]

Simulates a cohort with ``fmriflow.demo.cohort`` (sites, a weak FC effect, a dynamics effect;
see its docstring), writes it as plain region time series, runs the workflow in
``input.mode: timeseries`` from those files to the report (connectivity, windows, pretraining,
fine-tuning with every variant, both baselines and the permuted controls, on the same folds),
then prints the variants table (fold mean, bootstrap 95% CI) and the wall time of each rule.
``--quick`` shrinks everything (150 subjects, tiny recipe) to see the machinery run on a laptop.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import psutil
import yaml

from fmriflow.demo.cohort import CohortSpec, simulate_cohort, write_cohort
from fmriflow.finetune.settings import FinetuneSettings

REPO = Path(__file__).resolve().parents[1]


def config_for(args, cohort_dir: Path, results: Path) -> dict:
    window = args.volumes // 2
    return {
        "output_dir": str(results),
        "input": {"mode": "timeseries", "timeseries": {
            "format": "table", "dir": str(cohort_dir), "atlas": "cohort",
            "coordinates": str(cohort_dir / "regions.tsv"), "participants": str(cohort_dir / "participants.tsv")}},
        "report": {"group_column": "group"},
        "dataset": {"window": window, "stride": window // 2, "stratify": "group"},
        "pretrain": {"model": "tiny" if args.quick else "brainlm-5m", "max_steps": args.pretrain_steps,
                     "batch_size": 16, "gpus": int(args.device == "cuda"), "num_workers": 0},
        "finetune": {"enabled": True, "target": "group", "site_column": "site", "setups": args.setups,
                     "folds": args.folds, "repeats": 1, "device": args.device, "gpus": int(args.device == "cuda"),
                     "max_epochs": args.max_epochs, "resnet_width": 8 if args.quick else 64,
                     "attribution": False, "permutations": 2 if args.quick else args.permutations,
                     "variants": args.variants, "workers": args.workers},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("benchmark-cohort"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--setups", nargs="+", default=["agnostic", "site"],
                        help="fine-tuning set-ups (finetune.setups): agnostic = stratified k-fold, site = by site")
    parser.add_argument("--permutations", type=int, default=5, help="label-permuted refits per fold and control")
    parser.add_argument("--variants", nargs="+", default=[*FinetuneSettings.variants, "brainnetcnn"],
                        help="finetune.variants (default: every FMMTC variant and BrainNetCNN)")
    parser.add_argument("--workers", type=int, default=2,
                        help="finetune.workers: processes fitting units side by side (on a GPU they share it)")
    parser.add_argument("--quick", action="store_true", help="150 subjects, tiny models, few epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.sites, args.max_epochs, args.pretrain_steps = 150, 4, 10, 100

    spec = replace(CohortSpec(), n_subjects=args.subjects, n_regions=args.regions, n_volumes=args.volumes,
                   n_sites=args.sites)
    args.work.mkdir(parents=True, exist_ok=True)
    cohort_dir, results = args.work / "cohort", args.work / "results"
    started = time.perf_counter()
    if not (cohort_dir / "ground_truth.json").exists():
        write_cohort(simulate_cohort(spec), cohort_dir)
    simulated = time.perf_counter() - started
    config_file = args.work / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_for(args, cohort_dir.resolve(), results.resolve())))

    started = time.perf_counter()
    # the work folder holds the run's .snakemake records, which the timings read back
    # the local profile caps the jobs' memory at 8 GB (a laptop's); here the machine's own 80% is the cap,
    # else 8 one-GB jobs at a time starve a 16-core node (a 1,000-subject run spent 7 min before fine-tuning)
    mem_mb = int(psutil.virtual_memory().total * 0.8 / 2**20)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile",
                           str(REPO / "profiles" / "local"), "--cores", str(args.cores), "--resources",
                           f"mem_mb={mem_mb}", "--configfile",
                           str(config_file.resolve()), "--directory", str(args.work.resolve())], cwd=REPO)
    workflow = time.perf_counter() - started
    if proc.returncode:
        print(f"the workflow failed (exit {proc.returncode}); see the logs under {results}", file=sys.stderr)
        return proc.returncode

    table = pd.read_csv(results / "finetune" / "group" / "variants.tsv", sep="\t")
    print(f"\ncohort: {args.subjects} subjects, {args.sites} sites, {args.regions} regions, {args.volumes} volumes;"
          f" device {args.device}, {args.cores} cores")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nsimulation {simulated:.0f} s, workflow {workflow:.0f} s wall")
    subprocess.run([sys.executable, "-m", "fmriflow.cli", "timings", "--metadata",
                    str(args.work.resolve() / ".snakemake" / "metadata")], cwd=REPO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
