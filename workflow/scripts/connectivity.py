from fmriflow.smk import logged
from fmriflow.steps import connectivity_step

with logged(snakemake.log[0]):
    connectivity_step(snakemake.input.timeseries, snakemake.output.relmat, snakemake.config)
