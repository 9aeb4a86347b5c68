"""The SLURM profile: name resolution, and the demo DAG run as SLURM jobs on a real cluster.

``snakemake --profile slurm`` from the repository root must find ``profiles/slurm`` (through
the ``slurm`` link at the root). The DAG test runs a small demo with ``--profile profiles/slurm``
on the local cluster (``.ci/slurm-cluster.sh``; skipped without one, failed when
FMRIFLOW_REQUIRE_SLURM=1), pretraining on a requested GPU (on this CPU node, torchrun with one
process on gloo), then reads ``sacct`` and checks that every job of every rule ran as a SLURM
job with the CPUs, memory, time limit, partition and account it declared, and the GPU for the
GPU step; the declared values come from a separate ``snakemake --dry-run`` and the config.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from test_workflow import demo_config, make_demo

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

# the GPU step: 1 GPU, cpus_per_gpu 2 (the node has 2 CPUs), a time limit unlike the default
PRETRAIN = {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 3000, "runtime": 17}


def snakemake(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 1800):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def isolated_env(tmp: Path, **extra: str) -> dict:
    """The environment, with no user-level Snakemake profiles (XDG_CONFIG_HOME in tmp)."""
    (tmp / "xdg").mkdir(exist_ok=True)
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg"), **extra}


def dry_run_jobs(stdout: str) -> list[dict]:
    """The jobs of ``snakemake --dry-run`` output: rule, threads and resources of each."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", stdout):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append({"rule": head.group(1), "threads": int(fields.get("threads", 1)), "resources": resources})
    return jobs


def minutes(timelimit: str) -> int:
    """sacct's [D-]HH:MM:SS as minutes."""
    days, _, clock = timelimit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def megabytes(reqmem: str) -> int:
    """sacct's ReqMem (e.g. 2000M, 3G; 'n' / 'c' suffixes of older SLURM) in MB."""
    value = reqmem.rstrip("nc")
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[value[-1]]
    return round(float(value[:-1]) * scale)


def cluster_account_and_partition() -> tuple[str, str]:
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    accounts = subprocess.run(["sacctmgr", "--noheader", "--parsable2", "show", "association", f"user={user}",
                               "format=account"], capture_output=True, text=True, check=True).stdout.split()
    partitions = subprocess.run(["sinfo", "--noheader", "--format", "%P"], capture_output=True, text=True,
                                check=True).stdout.split()
    assert accounts and partitions, "the cluster has no account for this user or no partition"
    default = [p.rstrip("*") for p in partitions if p.endswith("*")]
    return accounts[0], (default or partitions)[0]


def test_profile_name_resolves_from_the_repository_root(tmp_path, atlas_dir):
    """`snakemake --profile slurm -n` from the root plans the same jobs as `--profile profiles/slurm`."""
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=30, seed=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config(demo, tmp_path / "results", pretrain={"gpus": 1, **PRETRAIN})))
    env = isolated_env(tmp_path)
    by_name = snakemake("--profile", "slurm", "-n", "--configfile", str(config), env=env)
    assert by_name.returncode == 0, by_name.stderr[-3000:]
    assert "Using profile slurm" in by_name.stdout + by_name.stderr
    by_path = snakemake("--profile", "profiles/slurm", "-n", "--configfile", str(config), env=env)
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    jobs = dry_run_jobs(by_name.stdout)
    # the same jobs; Snakemake lists jobs of one level in no fixed order across processes
    assert jobs and sorted(jobs, key=repr) == sorted(dry_run_jobs(by_path.stdout), key=repr)
    # the profile's defaults and the GPU step's resources are in the plan
    pretrain = next(j for j in jobs if j["rule"] == "pretrain")
    assert pretrain["resources"]["gpu"] == "1" and pretrain["resources"]["cpus_per_gpu"] == "2"
    assert next(j for j in jobs if j["rule"] == "bids")["resources"]["runtime"] == "60"
    # the name is found in the working directory: elsewhere it is unknown
    elsewhere = snakemake("--profile", "slurm", "-n", "--snakefile", str(REPO / "Snakefile"),
                          "--configfile", str(config), cwd=tmp_path, env=env)
    assert elsewhere.returncode != 0 and "profile directory given (slurm)" in elsewhere.stderr


def test_multi_node_pretraining_plan(tmp_path, atlas_dir):
    """pretrain.nodes: 2 plans one job on two nodes, GPUs per node, whose command is srun + torchrun."""
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=30, seed=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config(
        demo, tmp_path / "results", pretrain={"gpus": 4, "nodes": 2, "cpus_per_gpu": 8, "gpu_model": "h100"})))
    proc = snakemake("--profile", "slurm", "-n", "--configfile", str(config), env=isolated_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pretrain = next(j for j in dry_run_jobs(proc.stdout) if j["rule"] == "pretrain")["resources"]
    assert {k: pretrain[k] for k in ("nodes", "gres", "cpus_per_gpu", "mpi", "tasks", "slurm_extra")} == {
        "nodes": "2", "gres": "gpu:h100:4", "cpus_per_gpu": "8", "mpi": "srun", "tasks": "2",
        "slurm_extra": "--ntasks-per-node=1"}
    command = next(line for line in proc.stdout.splitlines() if "-m fmriflow.train" in line)
    command = command.removeprefix("Shell command: ")  # printshellcmds (the profile)
    assert command.startswith('srun --nodes "${SLURM_NNODES:-2}" --ntasks-per-node 1')
    assert '-m torch.distributed.run --nnodes "${SLURM_NNODES:-2}" --nproc-per-node 4 --rdzv-backend c10d' in command


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, atlas_dir):
    """The small demo DAG through `--profile profiles/slurm`; its SLURM job ids and dry-run plan."""
    base = tmp_path_factory.mktemp("slurm")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=60, seed=3)
    config = demo_config(demo, base / "results")
    config["pretrain"].update(PRETRAIN)
    # fine-tuning at its smallest: one variant, one set-up
    config["finetune"].update(variants=["concat"], setups=["agnostic"], permuted_control=False, attribution=False,
                              mem_mb=2500, runtime=19)
    config_file = base / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    account, partition = cluster_account_and_partition()
    env = isolated_env(base, FMRIFLOW_SLURM_ACCOUNT=account, FMRIFLOW_SLURM_PARTITION=partition)
    # the plugin's first status check comes after 40 s by default: a few seconds suit jobs this short
    started = time.monotonic()
    proc = snakemake("--profile", "profiles/slurm", "--configfile", str(config_file),
                     "--slurm-init-seconds-before-status-checks", "2", env=env)
    wall = time.monotonic() - started
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    print(f"SLURM DAG run: {wall:.0f} s", file=sys.stderr)
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    # the declared resources of every job, evaluated by Snakemake with the inputs now on disk
    # (sizes known); planned for the local executor, whose dry-run also prints each job's threads
    plan = snakemake("--profile", "profiles/slurm", "--configfile", str(config_file), "-n", "--forceall",
                     "--executor", "local", "--cores", "1024", env=env)
    assert plan.returncode == 0, plan.stderr[-3000:]
    return {"job_ids": job_ids, "plan": dry_run_jobs(plan.stdout), "log": log, "account": account,
            "partition": partition, "config": config}


def sacct_rows(job_ids: list[str]) -> list[dict]:
    fields = "JobID,Comment,State,Partition,Account,AllocCPUS,ReqMem,Timelimit,ReqTRES,AllocTRES"
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", ",".join(job_ids),
                          "--format", fields], capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields.split(","), line.split("|"))) for line in out.splitlines() if line]


def test_every_rule_ran_as_a_slurm_job_with_its_resources(slurm_run):
    # rules Snakemake runs in its own process: `all` only gathers its inputs; run_files lists and hashes
    # the runs' files (`localrule: True` in qc.smk)
    planned = [j for j in slurm_run["plan"] if j["rule"] not in ("all", "run_files")]
    rows = sacct_rows(slurm_run["job_ids"])
    assert len(rows) == len(slurm_run["job_ids"]) == len(planned)
    assert {r["State"] for r in rows} == {"COMPLETED"}
    assert {r["Partition"] for r in rows} == {slurm_run["partition"]}
    assert {r["Account"] for r in rows} == {slurm_run["account"]}

    def rule_of(comment: str) -> str:  # the plugin's comment: rule_<name>[_wildcards_<values>]
        return re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment).group(1)

    ran, declared = defaultdict(list), defaultdict(list)
    for r in rows:
        gpus = re.search(r"gres/gpu=(\d+)", r["ReqTRES"])
        ran[rule_of(r["Comment"])].append(
            (int(r["AllocCPUS"]), megabytes(r["ReqMem"]), minutes(r["Timelimit"]), int(gpus.group(1)) if gpus else 0))
    for j in planned:
        res = j["resources"]
        declared[j["rule"]].append((j["threads"], int(res["mem_mb"]), int(res["runtime"]), int(res.get("gpu", 0))))
    assert {k: sorted(v) for k, v in ran.items()} == {k: sorted(v) for k, v in declared.items()}
    # the rules of the chain are all there, each job sized as declared
    assert {"bids", "preproc_derivatives", "resample", "denoise", "parcellate", "connectivity", "dataset",
            "pretrain", "finetune", "report"} <= set(ran)


def test_gpu_step_asked_for_its_gpu_and_trained_under_torchrun(slurm_run):
    """pretrain asked for pretrain.gpus GPUs with cpus_per_gpu each, as the config says."""
    cfg = slurm_run["config"]["pretrain"]
    rows = [r for r in sacct_rows(slurm_run["job_ids"]) if r["Comment"] == "rule_pretrain"]
    assert len(rows) == 1
    row = rows[0]
    assert "gres/gpu=1" in row["AllocTRES"] and int(row["AllocCPUS"]) == cfg["gpus"] * cfg["cpus_per_gpu"]
    assert megabytes(row["ReqMem"]) == cfg["mem_mb"] and minutes(row["Timelimit"]) == cfg["runtime"]
    # no other job asked for a GPU
    others = [r for r in sacct_rows(slurm_run["job_ids"]) if r["Comment"] != "rule_pretrain"]
    assert not [r for r in others if "gres/gpu" in r["ReqTRES"]]
    # torchrun started one process on the CPU (gloo), which trained to the configured step count
    results = Path(slurm_run["config"]["output_dir"])
    (train_log,) = (results / "logs" / "pretrain").glob("*.log")
    assert "1 process(es) on cpu" in train_log.read_text()
    assert "torch.distributed.run --standalone --nproc-per-node 1 -m fmriflow.train" in slurm_run["log"]
    (metrics,) = (results / "pretrain").glob("*/metrics.csv")
    steps = [int(row["step"]) for row in csv.DictReader(metrics.open())]
    assert max(steps) == cfg["max_steps"]
