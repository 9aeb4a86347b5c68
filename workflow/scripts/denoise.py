from fmriflow.smk import logged
from fmriflow.steps import denoise_step

with logged(snakemake.log[0]):
    i = snakemake.input
    denoise_step(i.bold, i.mask, i.fmriprep_bold, i.confounds, snakemake.output.bold, snakemake.config)
