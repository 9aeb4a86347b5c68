from fmriflow.smk import logged
from fmriflow.steps import atlas_step

with logged(snakemake.log[0]):
    where = snakemake.config["atlas"]  # locations only (the rule's comment says why they are no params)
    atlas_step(snakemake.output.img, snakemake.output.labels, where["cache_dir"], where["path"])
