# The pretrained encoder as a bundle that another project can fine-tune from (finetune.encoder):
# weights, architecture and a model card saying how to prepare data for it (fmriflow.bundle).

rule bundle:
    """model.safetensors + config.json + model_card.json of the pretrain rule's model, its data's scaling and atlas."""
    input:
        model=rules.pretrain.output.model,
        metrics=rules.pretrain.output.metrics,
        card=rules.dataset.output.card,  # scaling.tsv beside it; the card holds its sha256
        **atlas_image_input(),
        atlas_labels=atlas_labels(ATLAS),
        manifest=raw_manifest(),
    output:
        weights=bundle_files(BUNDLE_DIR)[0],
        config=bundle_files(BUNDLE_DIR)[1],
        card=bundle_files(BUNDLE_DIR)[2],
    params:
        atlas=ATLAS,
        **shaping("preproc.mode", "denoise", "parcellate"),  # recorded in the card as the data's preparation
    log:
        f"{LOGS}/bundle/atlas-{ATLAS}_model-{PRETRAIN['model']}.log",
    run:
        from pathlib import Path

        from fmriflow.bundle.write import bundle_step
        from fmriflow.smk import logged

        with logged(log[0]):
            bundle_step(input.model, input.metrics, input.card, params.atlas, input.get("atlas_image"), input.atlas_labels,
                        input.manifest, str(Path(output.weights).parent), preprocessing=params.config)
