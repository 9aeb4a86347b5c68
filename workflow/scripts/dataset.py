from fmriflow.smk import logged
from fmriflow.steps import dataset_step

with logged(snakemake.log[0]):
    i, config = snakemake.input, snakemake.params.config
    if "encoder_card" in i.keys():  # finetune.encoder: prepared by the bundle's card
        from fmriflow.bundle.prepare import prepare_step

        prepare_step(i.encoder_card, snakemake.params.atlas, i.get("atlas_image"), i.atlas_labels, snakemake.params.runs,
                     list(i.timeseries), i.participants, snakemake.output.card, config=config)
    else:
        dataset_step(snakemake.params.runs, list(i.timeseries), i.participants, snakemake.output.card,
                     **config["dataset"])
