from fmriflow.smk import logged
from fmriflow.steps import denoise_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    denoise_step(snakemake.wildcards.run, i.bold, i.mask, i.confounds, o.bold, o.qc, **snakemake.params.config["denoise"])
