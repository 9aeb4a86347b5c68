from fmriflow.smk import logged
from fmriflow.steps import extra_atlas_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    extra_atlas_step(snakemake.wildcards.extra, i.image, i.labels, i.reference, o.img, o.labels)
