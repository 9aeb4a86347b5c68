# Fine-tuning and evaluation: FMMTC (frozen encoder + ResNet-18 on FC), its ablations and the
# FC baselines, cross-validated by subject for every set-up (drug-agnostic, per drug, per held-out site).

FINETUNE = config["finetune"]
FINETUNE_DIR = f"{OUT}/finetune/{FINETUNE['target']}"


def finetune_setups():
    """Set-ups the participants table supports (read at DAG time: raw BIDS is there)."""
    from fmriflow.finetune.cohort import load_cohort, setup_names

    participants = f"{BIDS_DIR}/participants.tsv"
    try:
        cohort = load_cohort(participants, FINETUNE["target"], FINETUNE["task"], FINETUNE["missing_labels"],
                             subjects=sorted({naming.subject_of(r) for r in RUNS}))
    except Exception:  # a broken table is reported, naming the problem, by the jobs that read it
        return ["agnostic"]
    names = setup_names(cohort, FINETUNE["drug_column"], FINETUNE["site_column"])
    return [n for n in names if n.split("-")[0] in FINETUNE["setups"]]


def finetune_resources():
    resources = {"mem_mb": FINETUNE["mem_mb"], "runtime": FINETUNE["runtime"]}
    if FINETUNE["gpus"]:
        resources.update(gpu=FINETUNE["gpus"], cpus_per_gpu=PRETRAIN["cpus_per_gpu"])
        if PRETRAIN["gpu_model"]:
            resources["gpu_model"] = PRETRAIN["gpu_model"]
    return resources


SETUPS = finetune_setups() if FINETUNE["enabled"] else []


rule finetune_features:
    """Per-window FC and frozen-encoder embeddings (pretrained and random), computed once."""
    input:
        card=rules.dataset.output.card,
        model=rules.pretrain.output.model,
        coords=atlas_labels(ATLAS),
    output:
        fc=f"{FINETUNE_DIR}/features/fc.npy",
        ts=f"{FINETUNE_DIR}/features/ts_pretrained.npy",
        random=f"{FINETUNE_DIR}/features/ts_random.npy",
        samples=f"{FINETUNE_DIR}/features/samples.npy",
    params:
        dataset=DATASET_DIR,
        config=shaping("finetune.seed", "finetune.device"),
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/finetune/features.log",
    script:
        "../scripts/finetune_features.py"


rule finetune:
    """Every variant and baseline, k-fold by subject, on one set-up; predictions, metrics, attributions."""
    input:
        features=rules.finetune_features.output,
        model=rules.pretrain.output.model,
        coords=atlas_labels(ATLAS),
        participants=f"{BIDS_DIR}/participants.tsv",
    output:
        predictions=f"{FINETUNE_DIR}/setup-{{setup}}/predictions.tsv",
        metrics=f"{FINETUNE_DIR}/setup-{{setup}}/metrics.tsv",
    params:
        dataset=DATASET_DIR,
        # what trains and scores one set-up; not which set-ups exist, nor the job's size
        config=shaping("finetune", drop=("finetune.enabled", "finetune.setups", "finetune.gpus",
                                         "finetune.mem_mb", "finetune.runtime")),
    wildcard_constraints:
        setup="[A-Za-z0-9_.-]+",
    threads: 2
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/finetune/setup-{{setup}}.log",
    script:
        "../scripts/finetune.py"


rule finetune_table:
    """One table of every variant and baseline over all set-ups (mean, sd, bootstrap CI)."""
    input:
        metrics=expand(f"{FINETUNE_DIR}/setup-{{setup}}/metrics.tsv", setup=SETUPS),
    output:
        table=f"{FINETUNE_DIR}/variants.tsv",
    log:
        f"{LOGS}/finetune/table.log",
    run:
        from fmriflow.finetune.run import table_step
        from fmriflow.smk import logged

        with logged(log[0]):
            table_step(list(input.metrics), output.table)
