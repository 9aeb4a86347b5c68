# BrainSymphony (opt-in, brainsymphony.enabled): structural connectomes from QSIRecon / MRtrix outputs,
# then masked pretraining on the dataset's windows and/or the connectomes.


rule sc_connectome:
    """A subject's connectome read, checked against the atlas (size, order, symmetric, finite) and transformed."""
    input:
        source=lambda wildcards: sc_sources()[wildcards.subject],
        labels=atlas_labels(ATLAS),
        **({"volumes": SYMPHONY["sc"]["volumes"]} if SYMPHONY["sc"]["volumes"] else {}),
    output:
        sc_matrix("{subject}"),
    params:
        sc=SYMPHONY["sc"],
    log:
        f"{LOGS}/sc_connectome/sub-{{subject}}.log",
    script:
        "../scripts/sc_connectome.py"


rule brainsymphony_pretrain:
    """BrainSymphony's masked reconstruction; resumes from its checkpoint when rerun after a time limit."""
    input:
        card=rules.dataset.output.card,
        connectomes=sc_outputs(),
    output:
        model=f"{SYMPHONY_DIR}/model.pt",
        metrics=f"{SYMPHONY_DIR}/metrics.csv",
    params:
        launcher=launch.train_launcher(SYMPHONY, JOB_PYTHON),
        out=SYMPHONY_DIR,
        dataset=DATASET_DIR,
        sc_dir=lambda wildcards, input: f"--sc-dir {SC_OUT}" if input.connectomes else "",
        options=cli_options({key: SYMPHONY[key] for key in ("model", "modalities", "batch_size", "max_steps", "lr",
                                                             "warmup_steps", "checkpoint_every", "precision", "seed",
                                                             "num_workers")}),
    threads: launch.train_threads(SYMPHONY)
    resources:
        **launch.train_resources(SYMPHONY),
    log:
        f"{LOGS}/brainsymphony_pretrain/{SYMPHONY['model']}_modalities-{SYMPHONY['modalities']}.log",
    shell:
        "{params.launcher} -m fmriflow.train --task brainsymphony --dataset {params.dataset} {params.sc_dir}"
        " --out {params.out} {params.options} > {log} 2>&1"


rule brainsymphony_probe:
    """Region read-outs: incoming attention per region (and network), reconstruction R^2, network identification."""
    input:
        model=rules.brainsymphony_pretrain.output.model,
        card=rules.dataset.output.card,
        connectomes=sc_outputs(),
        **({"networks": SYMPHONY["networks"]} if SYMPHONY["networks"] else {}),
    output:
        regions=f"{SYMPHONY_DIR}/probe/regions.tsv",
        metrics=f"{SYMPHONY_DIR}/probe/network_identification.json",
    params:
        dataset=DATASET_DIR,
        sc_dir=SC_OUT,
        windows=SYMPHONY["probe_windows"],
        folds=SYMPHONY["probe_folds"],
        seed=SYMPHONY["seed"],
    log:
        f"{LOGS}/brainsymphony_probe/{SYMPHONY['model']}_modalities-{SYMPHONY['modalities']}.log",
    script:
        "../scripts/brainsymphony_probe.py"


rule brainsymphony_features:
    """Every dataset window's frozen BrainSymphony embeddings (fMRI only, SC only, fused) for the probe rows."""
    input:
        model=rules.brainsymphony_pretrain.output.model,
        card=rules.dataset.output.card,
        connectomes=sc_outputs(),
        **({"networks": symphony_readout_networks()} if symphony_readout_networks() else {}),
    output:
        samples=symphony_feature_files()[0],
        arrays=symphony_feature_files()[1:-1],
        subjects=symphony_feature_files()[-1],
    params:
        dataset=DATASET_DIR,
        sc_dir=SC_OUT,
    log:
        f"{LOGS}/brainsymphony_features/{SYMPHONY['model']}_modalities-{SYMPHONY['modalities']}.log",
    script:
        "../scripts/brainsymphony_features.py"
