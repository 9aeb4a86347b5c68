# Model-ready dataset and foundation-model pretraining (GPU on SLURM, CPU for the demo).

import sys

PRETRAIN = config["pretrain"]
DATASET_DIR = f"{OUT}/dataset/atlas-{ATLAS}"
PRETRAIN_DIR = f"{OUT}/pretrain/{PRETRAIN['model']}"


def pretrain_resources():
    """SLURM resources through the executor plugin's gpu / gpu_model / cpus_per_gpu keys."""
    resources = {"mem_mb": PRETRAIN["mem_mb"], "runtime": PRETRAIN["runtime"]}
    if PRETRAIN["gpus"]:
        resources.update(gpu=PRETRAIN["gpus"], cpus_per_gpu=PRETRAIN["cpus_per_gpu"])
        if PRETRAIN["gpu_model"]:
            resources["gpu_model"] = PRETRAIN["gpu_model"]
    return resources


def train_launcher():
    """torchrun with one process per GPU; plain python on the CPU (the interpreter running Snakemake)."""
    if PRETRAIN["gpus"] == 0:
        return sys.executable
    return f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node {PRETRAIN['gpus']}"


rule dataset:
    """Windows of the A424 time series, robust-scaled on training subjects, split by subject, memory-mapped."""
    input:
        timeseries=lambda wildcards: [timeseries(r, ATLAS) for r in included_runs()],  # QC-passed runs only
        participants=f"{BIDS_DIR}/participants.tsv",
    output:
        card=f"{DATASET_DIR}/dataset_card.json",
    params:
        runs=lambda wildcards: included_runs(),
    log:
        f"{LOGS}/dataset/atlas-{ATLAS}.log",
    script:
        "../scripts/dataset.py"


rule pretrain:
    """BrainLM-style masked autoencoder; resumes from its checkpoint when rerun after a time limit."""
    input:
        card=rules.dataset.output.card,
        coords=atlas_labels(ATLAS),
    output:
        model=f"{PRETRAIN_DIR}/model.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.csv",
    params:
        launcher=train_launcher(),
        out=PRETRAIN_DIR,
        dataset=DATASET_DIR,
        options=" ".join(
            f"--{key.replace('_', '-')} {PRETRAIN[key]}"
            for key in ("model", "batch_size", "max_steps", "lr", "warmup_steps", "checkpoint_every", "precision", "seed",
                        "num_workers")
        )
        + (" --compile" if PRETRAIN["compile"] else ""),
    threads: max(1, PRETRAIN["gpus"]) * PRETRAIN["cpus_per_gpu"] if PRETRAIN["gpus"] else 2
    resources:
        **pretrain_resources(),
    log:
        f"{LOGS}/pretrain/{PRETRAIN['model']}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --coords {input.coords}"
        " --out {params.out} {params.options} > {log} 2>&1"
