from fmriflow.smk import logged
from fmriflow.steps import dataset_step

with logged(snakemake.log[0]):
    i = snakemake.input
    dataset_step(snakemake.params.runs, list(i.timeseries), i.participants, snakemake.output.card,
                 **snakemake.params.config["dataset"])
