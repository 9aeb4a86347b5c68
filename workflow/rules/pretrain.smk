# Model-ready dataset and foundation-model pretraining (GPU on SLURM, CPU for the demo).

import shlex

PRETRAIN = config["pretrain"]
DATASET_DIR = f"{OUT}/dataset/atlas-{ATLAS}"
PRETRAIN_DIR = f"{OUT}/pretrain/{PRETRAIN['model']}"


def gpu_resources(section):
    """SLURM resources of a training section through the executor plugin's gpu / gpu_model / cpus_per_gpu keys."""
    resources = {"mem_mb": section["mem_mb"], "runtime": section["runtime"]}
    if section["gpus"]:
        resources.update(gpu=section["gpus"], cpus_per_gpu=section["cpus_per_gpu"])
        if section["gpu_model"]:
            resources["gpu_model"] = section["gpu_model"]
    return resources


def train_launcher(section):
    """torchrun with one process per GPU; plain python on the CPU."""
    if section["gpus"] == 0:
        return JOB_PYTHON
    return f"{JOB_PYTHON} -m torch.distributed.run --standalone --nproc-per-node {section['gpus']}"


def train_threads(section):
    return section["gpus"] * section["cpus_per_gpu"] if section["gpus"] else 2


def cli_options(options):
    """``--key value`` for each item (``--key`` / ``--no-key`` for booleans), shell-quoted."""
    words = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


rule dataset:
    """Windows of the A424 time series, robust-scaled on training subjects, split by subject, memory-mapped."""
    input:
        timeseries=lambda wildcards: [timeseries(r, ATLAS) for r in included_runs()],  # QC-passed runs only
        participants=f"{BIDS_DIR}/participants.tsv",
    output:
        card=f"{DATASET_DIR}/dataset_card.json",
    params:
        runs=lambda wildcards: included_runs(),
        config=shaping("dataset"),
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
        launcher=train_launcher(PRETRAIN),
        out=PRETRAIN_DIR,
        dataset=DATASET_DIR,
        options=cli_options({key: PRETRAIN[key] for key in ("model", "batch_size", "max_steps", "lr", "warmup_steps",
                                                             "checkpoint_every", "precision", "seed", "num_workers",
                                                             "compile")}),
    threads: train_threads(PRETRAIN)
    resources:
        **gpu_resources(PRETRAIN),
    log:
        f"{LOGS}/pretrain/{PRETRAIN['model']}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --coords {input.coords}"
        " --out {params.out} {params.options} > {log} 2>&1"
