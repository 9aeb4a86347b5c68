# Voxel-level Mamba models on 4-D BOLD: datasets on each model's grid, NeuroSTORM masked
# pretraining, and fine-tuning of BrainMT / prompt tuning of NeuroSTORM on a participants column.
# Off unless voxel.enabled (GPU-sized work); each rule can also be asked for by name.

rule voxel_dataset:
    """Each run z-scored in its brain mask, background at the minimum, cropped / padded to the grid, memory-mapped."""
    input:
        # QC-passed runs only, as the region dataset (whose splits.tsv both levels share)
        **pooled("desc-preproc"),  # every run's BOLD and mask on the grid, and the QC table
        region_dataset=rules.dataset.output.card,
    output:
        card=f"{voxel_dataset_dir('{geometry}')}/dataset_card.json",
    params:
        runs=list(RUNS),  # the plan's runs (config subjects): the list and QC table may be older and hold more
        splits=f"{DATASET_DIR}/splits.tsv",
        **shaping("voxel.dtype"),
    wildcard_constraints:
        geometry="|".join(VOXEL_GRID.values()),
    resources:
        mem_mb=VOXEL["dataset_mem_mb"],
    log:
        f"{LOGS}/voxel_dataset/{{geometry}}.log",
    script:
        "../scripts/voxel_dataset.py"


rule voxel_pretrain:
    """NeuroSTORM masked pretraining (window masking, redundancy dropout); resumes from its checkpoint."""
    input:
        card=f"{voxel_dataset_dir(VOXEL_GRID['neurostorm'])}/dataset_card.json",
    output:
        model=f"{OUT}/voxel/neurostorm-mae/model.pt",
        metrics=f"{OUT}/voxel/neurostorm-mae/metrics.csv",
    params:
        launcher=launch.train_launcher(VOXEL, JOB_PYTHON),  # the interpreter that has fmriflow (the image's in a container)
        dataset=voxel_dataset_dir(VOXEL_GRID["neurostorm"]),
        out=f"{OUT}/voxel/neurostorm-mae",
        options=voxel_train_options("neurostorm-mae", VOXEL["pretrain"]),
    threads: launch.train_threads(VOXEL)
    resources:
        **launch.train_resources(VOXEL),
    log:
        f"{LOGS}/voxel_pretrain/neurostorm-mae.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --out {params.out} {params.options} > {log} 2>&1"


rule voxel_finetune:
    """BrainMT trained on the target column, or NeuroSTORM prompt-tuned on it (pretrained encoder frozen)."""
    input:
        unpack(voxel_finetune_input),
    output:
        model=f"{voxel_finetune_dir('{model}')}/model.pt",
        metrics=f"{voxel_finetune_dir('{model}')}/metrics.csv",
    params:
        launcher=launch.train_launcher(VOXEL, JOB_PYTHON),  # the interpreter that has fmriflow (the image's in a container)
        dataset=lambda wc: voxel_dataset_dir(VOXEL_GRID[wc.model]),
        out=lambda wc: voxel_finetune_dir(wc.model),
        options=lambda wc, input: voxel_train_options(
            wc.model, VOXEL[wc.model], target=VOXEL_TARGET, target_kind=VOXEL["target_kind"],
            **({"prompt_len": VOXEL["neurostorm"]["prompt_len"], "init_from": input.pretrained}
               if wc.model == "neurostorm" else {})),
    wildcard_constraints:
        model="brainmt|neurostorm",
    threads: launch.train_threads(VOXEL)
    resources:
        **launch.train_resources(VOXEL),
    log:
        f"{LOGS}/voxel_finetune/{{model}}_target-{VOXEL_TARGET}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --participants {input.participants}"
        " --out {params.out} {params.options} > {log} 2>&1"
