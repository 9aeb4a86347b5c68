from fmriflow.smk import logged
from fmriflow.steps import resample_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    resample_step(i.bold, i.mask, i.atlas, i.qc, o.bold, o.mask)
