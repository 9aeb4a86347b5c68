# Fine-tuning and evaluation: FMMTC (frozen encoder + ResNet-18 on FC), its ablations and the
# FC baselines, cross-validated by subject for every set-up (drug-agnostic, per drug, per held-out site).

rule finetune_features:
    """Per-window FC and frozen-encoder embeddings (pretrained and random), computed once."""
    input:
        card=rules.dataset.output.card,
        model=encoder_model(),  # this run's pretrain model, or finetune.encoder's weights
        encoder=encoder_extras(),
        coords=atlas_labels(ATLAS),
    output:
        fc=f"{FINETUNE_DIR}/features/{naming.FINETUNE_FEATURES['fc']}",
        ts=f"{FINETUNE_DIR}/features/{naming.FINETUNE_FEATURES['ts_pretrained']}",
        random=f"{FINETUNE_DIR}/features/{naming.FINETUNE_FEATURES['ts_random']}",
        samples=f"{FINETUNE_DIR}/features/{naming.FINETUNE_FEATURES['samples']}",
    params:
        dataset=DATASET_DIR,
        **shaping("finetune.seed", "finetune.device"),
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/finetune/features.log",
    benchmark:
        f"{LOGS}/benchmarks/finetune_features/features.tsv"  # peak memory for `fmriflow timings` (a run record)
    script:
        "../scripts/finetune_features.py"


rule finetune:
    """Every variant and baseline, k-fold by subject, on one set-up; predictions, metrics, attributions."""
    input:
        features=rules.finetune_features.output,
        model=encoder_model(),
        encoder=encoder_extras(),
        coords=atlas_labels(ATLAS),
        participants=PARTICIPANTS,
        symphony=symphony_features(),  # BrainSymphony's probe rows (brainsymphony.enabled), else none
        recipes=recipe_embeddings(),  # the released models' probe rows (recipes), else none
    output:
        predictions=f"{FINETUNE_DIR}/setup-{{setup}}/predictions.tsv",
        metrics=f"{FINETUNE_DIR}/setup-{{setup}}/metrics.tsv",
    params:
        dataset=DATASET_DIR,
        recipe_dirs=recipe_dirs(),
        # what trains and scores one set-up; not which set-ups exist, nor the job's size, nor where the
        # encoder and the windows come from (finetune.encoder, finetune.scaling: those reach it as inputs)
        # brainsymphony.fusion only while BrainSymphony runs: a config without it reruns nothing
        **shaping("finetune", *(["brainsymphony.fusion"] if SYMPHONY["enabled"] else []),
                  drop=("finetune.enabled", "finetune.setups", "finetune.gpus", "finetune.workers",
                        "finetune.mem_mb", "finetune.runtime", "finetune.encoder", "finetune.scaling")
                  # the recipes' variants only while recipes run: a config without recipes reruns nothing
                  + (() if RECIPE_PLANS else ("finetune.recipe_variants",))),
    wildcard_constraints:
        setup="[A-Za-z0-9_.-]+",
    threads: FINETUNE["workers"]  # worker processes over the set-up's folds and variants (fmriflow.finetune.pool)
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/finetune/setup-{{setup}}.log",
    benchmark:
        f"{LOGS}/benchmarks/finetune/setup-{{setup}}.tsv"
    script:
        "../scripts/finetune.py"


rule finetune_table:
    """One table of every variant and baseline over all set-ups (mean, sd, bootstrap CI)."""
    input:
        metrics=finetune_outputs(rules.finetune.output.metrics),  # every set-up the participants table supports
    output:
        table=f"{FINETUNE_DIR}/variants.tsv",
    log:
        f"{LOGS}/finetune/table.log",
    run:
        from fmriflow.finetune.run import table_step
        from fmriflow.smk import logged

        with logged(log[0]):
            table_step(list(input.metrics), output.table)
