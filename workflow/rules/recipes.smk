# Released foundation models, each on its authors' input recipe (opt-in: recipes names imported bundles):
# this project's data prepared as each model card says, then frozen embeddings of the bundle's encoder and of
# a random one of its architecture, for the rows probe_<name>, probe_random_<name> and <variant>_<name>
# (finetune.recipe_variants) of the fine-tuning's variants table (fmriflow.bundle.recipe_step,
# fmriflow.finetune.recipe_probe, fmriflow.finetune.recipe_fusion).


rule recipe_prepare:
    """The card's atlas in its region order (or its voxel grid), resampled to its TR, its windows, its normalisation."""
    input:
        unpack(recipe_prepare_input),
    output:
        windows=recipe_prepared()[0],
        index=recipe_prepared()[1],
        recipe=recipe_prepared()[2],
    params:
        runs=list(RUNS),  # the plan's runs (config subjects): the list and QC table may be older and hold more
        splits=f"{DATASET_DIR}/splits.tsv",  # the training subjects, where the card's statistics are refitted
        plan=lambda wildcards: RECIPE_PLANS[wildcards.recipe],
    wildcard_constraints:
        recipe="|".join(RECIPE_PLANS) or "(?!x)x",  # matches nothing without recipes
    resources:
        mem_mb=recipe_prepare_mem,  # from the runs it reads: the voxel recipe holds a whole run
    log:
        f"{LOGS}/recipes/{{recipe}}_prepare.log",
    benchmark:
        f"{LOGS}/benchmarks/recipe_prepare/{{recipe}}.tsv"  # peak memory: recipe_plan.prepare_mem_mb sizing
    script:
        "../scripts/recipe_prepare.py"


rule recipe_embed:
    """Every prepared window through the model's frozen encoder (its card's pooling). The bundle's weights
    leave no room for a seed: finetune.seed does not shape (nor rerun) it."""
    input:
        bundle=lambda wildcards: bundle_files(RECIPE_PLANS[wildcards.recipe]["bundle"]),
        windows=rules.recipe_prepare.output.windows,
        index=rules.recipe_prepare.output.index,
        recipe=rules.recipe_prepare.output.recipe,
    output:
        embeddings=recipe_embedded()[0],
        windows=recipe_embedded()[1],
    params:
        **shaping("finetune.device"),
    wildcard_constraints:
        recipe="|".join(RECIPE_PLANS) or "(?!x)x",
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/recipes/{{recipe}}_embed.log",
    run:
        from fmriflow.finetune.recipe_probe import embed_step
        from fmriflow.smk import logged

        with logged(log[0]):
            embed_step(str(Path(input.bundle[0]).parent), str(Path(input.windows).parent),
                       str(Path(output.embeddings).parent), pretrained=True, device=params.config["finetune"]["device"])


rule recipe_embed_random:
    """The same windows through the model's architecture randomly initialised (seeded finetune.seed): the
    control of probe_<name> (probe_random_<name>) and of no_pretrain_<name>."""
    input:
        bundle=lambda wildcards: bundle_files(RECIPE_PLANS[wildcards.recipe]["bundle"]),
        windows=rules.recipe_prepare.output.windows,
        index=rules.recipe_prepare.output.index,
        recipe=rules.recipe_prepare.output.recipe,
    output:
        embeddings=recipe_embedded(encoder="random")[0],
        windows=recipe_embedded(encoder="random")[1],
    params:
        **shaping("finetune.seed", "finetune.device"),
    wildcard_constraints:
        recipe="|".join(RECIPE_PLANS) or "(?!x)x",
    resources:
        **finetune_resources(),
    log:
        f"{LOGS}/recipes/{{recipe}}_embed_random.log",
    run:
        from fmriflow.finetune.recipe_probe import embed_step
        from fmriflow.smk import logged

        with logged(log[0]):
            settings = params.config["finetune"]
            embed_step(str(Path(input.bundle[0]).parent), str(Path(input.windows).parent),
                       str(Path(output.embeddings).parent), pretrained=False, seed=settings["seed"],
                       device=settings["device"])
