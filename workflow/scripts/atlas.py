from fmriflow.smk import logged
from fmriflow.steps import atlas_step

with logged(snakemake.log[0]):
    atlas_step(snakemake.output.img, snakemake.output.labels, snakemake.params.cache_dir, snakemake.params.local_dir)
