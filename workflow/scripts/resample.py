from fmriflow.smk import logged, per_run
from fmriflow.steps import resample_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    per_run(snakemake, lambda: resample_step(i.bold, i.mask, i.atlas, i.qc, o.bold, o.mask))
