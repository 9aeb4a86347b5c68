# Model-ready dataset and foundation-model pretraining (GPU on SLURM, CPU for the demo).

rule dataset:
    """Windows of the A424 time series, robust-scaled on training subjects, split by subject, memory-mapped."""
    input:
        **pooled(f"atlas-{ATLAS}_desc-timeseries"),  # every run's time series and the QC table: QC-passed runs are read
        participants=PARTICIPANTS,
        **dataset_encoder_inputs(),  # finetune.encoder, pretrain.init: prepared by its card (fmriflow.bundle.prepare)
    output:
        card=f"{DATASET_DIR}/dataset_card.json",
    params:
        runs=list(RUNS),  # the plan's runs (config subjects): the list and QC table may be older and hold more
        **dataset_shaping(),
    log:
        f"{LOGS}/dataset/atlas-{ATLAS}.log",
    script:
        "../scripts/dataset.py"


rule pretrain:
    """BrainLM-style masked autoencoder; resumes from its checkpoint when rerun after a time limit."""
    input:
        card=rules.dataset.output.card,
        coords=atlas_labels(ATLAS),
        **init_inputs(),  # pretrain.init: the bundle continued from
    output:
        model=f"{PRETRAIN_DIR}/model.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.csv",
    params:
        launcher=launch.train_launcher(PRETRAIN, JOB_PYTHON),  # the interpreter that has fmriflow (the image's in a container)
        out=PRETRAIN_DIR,
        dataset=DATASET_DIR,
        # the same settings as `fmriflow pretrain` (fmriflow.modelling)
        options=cli_options({**{key: PRETRAIN[key] for key in PRETRAIN_OPTIONS}, **pretrain_init_options()}),
    threads: launch.train_threads(PRETRAIN)
    resources:
        **launch.train_resources(PRETRAIN),
    log:
        f"{LOGS}/pretrain/{PRETRAIN['model']}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --coords {input.coords}"
        " --out {params.out} {params.options} > {log} 2>&1"
