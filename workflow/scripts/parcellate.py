from fmriflow.smk import logged
from fmriflow.steps import parcellate_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    parcellate_step(i.bold, i.mask, i.atlas, i.labels, o.timeseries, o.coverage, snakemake.config)
