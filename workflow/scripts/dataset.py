from fmriflow.runfiles import included
from fmriflow.smk import logged
from fmriflow.steps import dataset_step

with logged(snakemake.log[0]):
    i, config = snakemake.input, snakemake.params.config
    runs, timeseries = included(i.files, i.run_qc, "timeseries", snakemake.params.runs)  # the runs QC includes
    if "encoder_card" in i.keys():  # finetune.encoder: prepared by the bundle's card
        from fmriflow.bundle.prepare import prepare_step

        prepare_step(i.encoder_card, snakemake.params.atlas, i.get("atlas_image"), i.atlas_labels, runs,
                     timeseries, i.participants, snakemake.output.card, config=config)
    else:
        dataset_step(runs, timeseries, i.participants, snakemake.output.card, **config["dataset"])
