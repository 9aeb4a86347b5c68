"""fmriflow.launch: the training launch command and the SLURM resources of a training job.

The commands are checked word by word, and the multi-node form (srun starting one torchrun per
node, c10d rendezvous on the first node) is run for real as a SLURM job on the local cluster
(.ci/slurm-cluster.sh): on one node with two CPU processes (gloo), with and without the
``SLURM_*`` variables that the executor plugin's job step removes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from fmriflow.launch import RDZV_PORT, torchrun_command, train_launcher, train_resources, train_threads

PY = "/opt/venv/bin/python"


def section(**kwargs):
    base = {"gpus": 0, "nodes": 1, "gpu_model": None, "cpus_per_gpu": 8, "mem_mb": 16000, "runtime": 120}
    return {**base, **kwargs}


def test_cpu_runs_the_interpreter_alone():
    assert train_launcher(section(), PY) == PY
    assert train_launcher(section(), "/path with space/python") == "'/path with space/python'"
    assert train_threads(section()) == 2
    assert train_resources(section()) == {"mem_mb": 16000, "runtime": 120}


def test_one_node_is_standalone_torchrun_with_a_process_per_gpu():
    words = shlex.split(train_launcher(section(gpus=4), PY))
    assert words == [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    assert train_threads(section(gpus=4, cpus_per_gpu=6)) == 24
    assert train_resources(section(gpus=4, cpus_per_gpu=6)) == {
        "mem_mb": 16000, "runtime": 120, "gpu": 4, "cpus_per_gpu": 6}
    assert train_resources(section(gpus=2, gpu_model="h100"))["gpu_model"] == "h100"


# the first host of the allocation, from SLURM_JOB_NODELIST or, where the plugin's job step
# removed it, from squeue (nested quotes: bash parses them, shlex cannot)
FIRST_HOST = '$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)}" | head -n 1)'


def test_several_nodes_start_one_torchrun_per_node_through_srun():
    command = train_launcher(section(gpus=4, nodes=3), PY)
    assert command.count(FIRST_HOST) == 1
    words = shlex.split(command.replace(FIRST_HOST, "HOST"))  # shlex keeps ${...} for the job's shell
    srun, torchrun = words[:words.index(PY)], words[words.index(PY):]
    # one task per node, with the node's CPUs (4 GPUs x cpus_per_gpu 8)
    assert srun == ["srun", "--nodes", "${SLURM_NNODES:-3}", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                    "--cpus-per-task", "32"]
    options = dict(zip(torchrun[3::2], torchrun[4::2]))
    assert torchrun[:3] == [PY, "-m", "torch.distributed.run"] and len(torchrun) == 3 + 2 * len(options)
    assert options == {"--nnodes": "${SLURM_NNODES:-3}", "--nproc-per-node": "4", "--rdzv-backend": "c10d",
                       "--rdzv-endpoint": f"HOST:{RDZV_PORT}", "--rdzv-id": "$SLURM_JOB_ID"}
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0  # bash parses it


def test_several_nodes_ask_for_gpus_per_node_and_one_task_per_node():
    resources = train_resources(section(gpus=4, nodes=2, cpus_per_gpu=8, gpu_model="a100"))
    # --gpus counts the whole job; gres counts per node
    assert resources == {"mem_mb": 16000, "runtime": 120, "cpus_per_gpu": 8, "nodes": 2, "gres": "gpu:a100:4",
                         "mpi": "srun", "tasks": 2, "tasks_per_gpu": 0, "slurm_extra": "--ntasks-per-node=1"}
    assert "gpu" not in resources
    assert train_resources(section(gpus=1, nodes=2))["gres"] == "gpu:1"
    assert train_threads(section(gpus=4, nodes=2, cpus_per_gpu=8)) == 32  # one node's CPUs


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="nodes: 2 needs gpus"):
        train_launcher(section(nodes=2), PY)
    with pytest.raises(ValueError, match="nodes: 2 needs gpus"):
        train_resources(section(nodes=2))
    with pytest.raises(ValueError, match="nproc_per_node must be at least 1"):
        torchrun_command(PY, 0)
    with pytest.raises(ValueError, match="need srun"):
        torchrun_command(PY, 2, nodes=2, srun=False)


PROBE = """
import json, os, socket, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
out = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
out.update(sum=total.item(), host=socket.gethostname())
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


def wait_for_job(job_id: str, timeout: float = 300) -> str:
    """Poll sacct until the job ends; return its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(["sacct", "--noheader", "--parsable2", "--jobs", job_id, "--format", "JobID,State"],
                              capture_output=True, text=True)
        states = dict(line.split("|")[:2] for line in proc.stdout.splitlines() if line)
        state = states.get(job_id, "")
        if state and state not in ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED"):
            return state
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"SLURM job {job_id} did not end within {timeout} s")


@pytest.mark.integration
@pytest.mark.parametrize("plugin_env", [False, True], ids=["sbatch-env", "plugin-jobstep-env"])
def test_srun_rendezvous_runs_on_the_cluster(slurm_cluster, tmp_path, plugin_env):
    """The multi-node command, forced on one node: srun starts torchrun, whose two ranks meet
    at the rendezvous on the allocation's first node and all-reduce."""
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    launcher = torchrun_command(sys.executable, 2, nodes=1, srun=True, cpus_per_node=2)
    command = f"{launcher} {shlex.quote(str(probe))} {out}"
    if plugin_env:
        # as under the executor plugin's job step: only the job id of SLURM's variables is left
        command = ('for v in $(env | grep -o "^SLURM_[A-Z_]*" | grep -vx SLURM_JOB_ID); do unset "$v"; done; '
                   + command)
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nset -e\n{command}\n")
    proc = subprocess.run(["sbatch", "--parsable", "--nodes", "1", "--ntasks-per-node", "1", "--cpus-per-task", "2",
                           "--mem", "2000", "--time", "5", "--output", str(tmp_path / "job.log"), str(script)],
                          capture_output=True, text=True, check=True)
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_for_job(job_id)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert state == "COMPLETED", log[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["RANK"] for r in ranks] == ["0", "1"] and {r["WORLD_SIZE"] for r in ranks} == {"2"}
    assert {r["sum"] for r in ranks} == {3.0}  # 1 + 2 from both ranks
    first_host = subprocess.run(["scontrol", "show", "hostnames", slurm_cluster], capture_output=True, text=True,
                                check=True).stdout.split()[0]
    assert {r["host"] for r in ranks} == {first_host}
    # the srun step ran (one task), not torchrun straight in the batch shell
    steps = subprocess.run(["sacct", "--noheader", "--parsable2", "--jobs", job_id, "--format", "JobID,NTasks"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert f"{job_id}.0|1" in steps, steps
