"""Artefact parity of two revisions: the same small demo through both, every file's sha256 compared.

A refactor that claims "no change in behaviour" is checked with this: each revision is checked
out into its own git worktree, generates the demo data and runs the whole DAG (voxel models and
every fine-tuning variant and set-up included, at toy size) in the same folder, and every file
under the demo folders and ``results/`` is compared, as ``tests/test_workflow.py``'s
reproducibility test does: Snakemake's logs and TensorBoard files are left out, and measured
samples/s (in ``metrics.csv`` / ``train_log.csv``, and their checksums where the report records
them) are not compared.

    FMRIFLOW_ATLAS_DIR=/path/to/atlases python benchmarks/artefact_parity.py BEFORE [AFTER] [--work DIR]

AFTER defaults to the working tree's HEAD. About 17 minutes per revision on 2 cores; the folders
of each run stay under --work (``before``, ``after``), and ``--before-dir`` reuses an earlier one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "bids_dir": "demo/bids",
    "output_dir": "results",
    "preproc": {"mode": "derivatives", "derivatives_dir": "demo/derivatives/fmriprep"},
    "report": {"group_column": "response", "ground_truth": "demo/ground_truth/edges.tsv"},
    "atlas": {"cache_dir": "resources/atlases/A424"},
    "denoise": {"strategy": "24P"},
    "dataset": {"window": 20, "stride": 10, "fractions": [0.5, 0.25, 0.25]},
    "pretrain": {"max_steps": 6, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 3},
    # every run reaches the datasets: 60 volumes are too few for the default thresholds
    "qc": {"max_mean_fd": None, "max_fraction_censored": None, "min_degrees_of_freedom": None,
           "min_region_coverage": None},
    "finetune": {"variants": ["concat", "sum", "cross_attention", "moe", "ts_only", "fc_only", "no_pretrain"],
                 "folds": 2, "max_epochs": 2, "min_epochs": 0, "patience": 1, "permutations": 2, "resnet_width": 2,
                 "embed_dim": 16, "bootstrap": 20, "ig_steps": 4, "setups": ["agnostic", "drug", "site"]},
    "voxel": {"enabled": True, "warmup_steps": 1, "checkpoint_every": 1, "num_workers": 0, "mem_mb": 2000,
              "dataset_mem_mb": 2000,
              "pretrain": {"window": 2, "stride": 6, "batch_size": 2, "max_steps": 2, "lr": 1.0e-3},
              "brainmt": {"window": 2, "stride": 6, "batch_size": 2, "max_steps": 2, "lr": 1.0e-3},
              "neurostorm": {"window": 2, "stride": 6, "batch_size": 2, "max_steps": 2, "lr": 1.0e-3,
                             "prompt_len": 2}},
}
DEMOS = {  # folder -> demo-data options: the plain demo, and one with head motion and dummy volumes
    "demo": ["--subjects", "12", "--trs", "60", "--bold-res", "4", "--seed", "3"],
    "demo_motion": ["--subjects", "2", "--trs", "24", "--bold-res", "4", "--seed", "5", "--head-motion", "3",
                    "--dummy-volumes", "2"],
}


def run_revision(revision: str, work: Path, keep: Path) -> None:
    """Demo data and the whole DAG with ``revision``'s code, run in ``work``; results moved to ``keep``."""
    tree = keep.parent / f"tree-{keep.name}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copytree(tree / "config", work / "config")
        (work / "parity.yaml").write_text(yaml.safe_dump(CONFIG))
        for folder, options in DEMOS.items():
            subprocess.run([sys.executable, "-m", "fmriflow.cli", "demo-data", folder, *options, "--jobs", "2"],
                           cwd=work, env=env, check=True)
        with open(work / "snakemake.log", "w") as log:
            subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tree / "Snakefile"), "--profile",
                            str(tree / "profiles" / "local"), "--cores", "2", "--configfile", "parity.yaml"],
                           cwd=work, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for name in (*DEMOS, "results"):
            shutil.move(str(work / name), keep / name)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every compared file under ``root``, measurements masked."""
    out = {}
    for folder in (*DEMOS, "results"):
        base = root / folder
        # a training run's metrics.csv holds the measured samples/s: its checksum is a measurement too
        measured = [hashlib.sha256(p.read_bytes()).hexdigest().encode() for p in base.rglob("metrics.csv")]
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or "/logs/" in rel or "/tensorboard/" in rel:
                continue
            data = path.read_bytes()
            if "/report/" in rel and path.suffix in (".html", ".json"):
                for checksum in measured:
                    data = data.replace(checksum, b"<measured>")
            if path.name in ("train_log.csv", "metrics.csv") and b"samples_per_s" in data.split(b"\n", 1)[0]:
                data = pd.read_csv(path).drop(columns="samples_per_s").to_csv().encode()
            if path.name == "metrics.json" or path.name == "fmriflow_report.json":
                record = json.loads(data)
                record["Provenance"]["Output"].pop("sha256", None)
                data = json.dumps(record).encode()
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--before-dir", type=Path, help="BEFORE's artefacts kept from an earlier run (not rerun)")
    args = parser.parse_args()
    scratch = args.work or Path(tempfile.mkdtemp(prefix="fmriflow-parity-"))
    runs = [("after", args.after)] if args.before_dir else [("before", args.before), ("after", args.after)]
    for name, revision in runs:
        print(f"running {revision} ...", flush=True)
        run_revision(revision, scratch / "work", scratch / name)
    a, b = digests(args.before_dir or scratch / "before"), digests(scratch / "after")
    differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    print(f"{len(a)} files before, {len(b)} after; only before: {sorted(a.keys() - b.keys())}; "
          f"only after: {sorted(b.keys() - a.keys())}")
    print(f"{len(a.keys() & b.keys()) - len(differ)} identical, {len(differ)} differ:")
    for rel in differ:
        print("  ", rel)
    return 0 if not differ and a.keys() == b.keys() else 1


if __name__ == "__main__":
    sys.exit(main())
