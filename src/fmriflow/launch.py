"""How a training job is launched and what it asks SLURM for: one place for the rules to call.

A training section of the config (``pretrain``, ``voxel``) gives ``gpus`` (per node), ``nodes``,
``cpus_per_gpu``, ``gpu_model``, ``mem_mb`` and ``runtime``. From them:

- :func:`train_launcher` builds the command prefix that starts ``fmriflow.train``: the
  interpreter alone on the CPU, ``torchrun --standalone`` with one process per GPU on one node,
  and on several nodes ``srun`` starting one ``torchrun`` per node (one task per node) that
  meet at a c10d rendezvous on the allocation's first node.
- :func:`train_resources` gives the Snakemake resources that the SLURM executor plugin turns
  into ``sbatch`` options (``gpu`` / ``gpu_model`` / ``cpus_per_gpu`` on one node; on several
  nodes ``nodes``, a per-node ``gres`` and one task per node).
- :func:`train_threads` gives the rule's threads (CPUs of one node).

The multi-node command runs in the job's batch shell on the first node. The executor plugin's
job step removes most ``SLURM_*`` variables from that shell's environment, so the node list and
node count fall back to ``squeue`` and the configured node count when they are missing.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

RDZV_PORT = 29500
# the first host of the allocation, resolved by the batch shell before srun starts the tasks
_NODELIST = '"${SLURM_JOB_NODELIST:-$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)}"'
_FIRST_HOST = f"$(scontrol show hostnames {_NODELIST} | head -n 1)"


def torchrun_command(python: str, nproc_per_node: int, nodes: int = 1, *, srun: bool | None = None,
                     cpus_per_node: int | None = None, port: int = RDZV_PORT) -> str:
    """Shell prefix that starts a Python module under ``torchrun``.

    Parameters
    ----------
    python : str
        The interpreter (the one running Snakemake, so that jobs find fmriflow).
    nproc_per_node : int
        Processes per node: one per GPU (at least 1).
    nodes : int
        Nodes of the allocation. More than one starts ``torchrun`` through ``srun``.
    srun : bool or None
        Force (True) or forbid (False) the ``srun`` + c10d rendezvous form; None: when
        ``nodes > 1``. Forcing it on one node runs the multi-node path on a single machine.
    cpus_per_node : int or None
        CPUs of each srun task (``--cpus-per-task``): a step's task gets one CPU unless told,
        and torchrun's processes and their data loaders share the task's CPUs.
    port : int
        TCP port of the rendezvous on the first node.

    Returns
    -------
    str
        A command prefix; append ``-m module args...``.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")
    use_srun = nodes > 1 if srun is None else srun
    if nodes > 1 and not use_srun:
        raise ValueError("several nodes need srun to start one torchrun per node")
    torchrun = f"{shlex.quote(python)} -m torch.distributed.run"
    if not use_srun:
        return f"{torchrun} --standalone --nproc-per-node {nproc_per_node}"
    nnodes = f'"${{SLURM_NNODES:-{nodes}}}"'
    return (
        # one task per node; a task that fails ends the others instead of leaving them waiting
        f"srun --nodes {nnodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        + (f"--cpus-per-task {cpus_per_node} " if cpus_per_node else "")
        + f"{torchrun} --nnodes {nnodes} --nproc-per-node {nproc_per_node}"
        f' --rdzv-backend c10d --rdzv-endpoint "{_FIRST_HOST}:{port}" --rdzv-id "$SLURM_JOB_ID"'
    )


def train_launcher(section: Mapping[str, Any], python: str) -> str:
    """Command prefix that starts ``fmriflow.train`` for a training section of the config.

    Parameters
    ----------
    section : mapping
        The config section (``gpus``: per node, ``nodes``: default 1).
    python : str
        The interpreter that runs the training.

    Returns
    -------
    str
        ``python`` on the CPU, ``torchrun`` on GPUs (through ``srun`` on several nodes).
    """
    gpus, nodes = _gpus_nodes(section)
    if gpus == 0:
        return shlex.quote(python)
    return torchrun_command(python, gpus, nodes, cpus_per_node=train_threads(section))


def train_threads(section: Mapping[str, Any], cpu_threads: int = 2) -> int:
    """CPUs of one node of a training job: ``gpus * cpus_per_gpu``, or ``cpu_threads`` on the CPU."""
    gpus, _ = _gpus_nodes(section)
    return gpus * section["cpus_per_gpu"] if gpus else cpu_threads


def train_resources(section: Mapping[str, Any]) -> dict[str, Any]:
    """Snakemake resources of a training job, as the SLURM executor plugin reads them.

    One node: ``gpu`` (the job's GPUs, ``sbatch --gpus``), ``gpu_model`` and ``cpus_per_gpu``.
    Several nodes: ``nodes``, ``gres=gpu[:model]:N`` (per node, where ``--gpus`` would count the
    whole job), one task per node (``tasks`` = nodes with ``slurm_extra --ntasks-per-node=1``)
    and ``mpi`` so that the job step runs the command on the first node, whose ``srun`` starts
    the tasks (``tasks_per_gpu: 0`` keeps the plugin from adding ``--ntasks-per-gpu``).

    Parameters
    ----------
    section : mapping
        The config section (``gpus``, ``nodes``, ``gpu_model``, ``cpus_per_gpu``, ``mem_mb``
        per node, ``runtime`` in minutes).

    Returns
    -------
    dict
        Resources for the rule's ``resources:``.
    """
    gpus, nodes = _gpus_nodes(section)
    resources: dict[str, Any] = {"mem_mb": section["mem_mb"], "runtime": section["runtime"]}
    if not gpus:
        return resources
    model = section.get("gpu_model")
    resources["cpus_per_gpu"] = section["cpus_per_gpu"]
    if nodes == 1:
        resources["gpu"] = gpus
        if model:
            resources["gpu_model"] = model
    else:
        resources.update(
            nodes=nodes, gres=f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}",
            mpi="srun", tasks=nodes, tasks_per_gpu=0, slurm_extra="--ntasks-per-node=1",
        )
    return resources


def _gpus_nodes(section: Mapping[str, Any]) -> tuple[int, int]:
    gpus, nodes = int(section["gpus"]), int(section.get("nodes", 1))
    if nodes > 1 and gpus == 0:
        raise ValueError(f"nodes: {nodes} needs gpus (per node) of at least 1: training on several "
                         "nodes is for GPUs; set gpus, or nodes: 1 to train on one CPU")
    return gpus, nodes
