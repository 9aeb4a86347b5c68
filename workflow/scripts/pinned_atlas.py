from fmriflow.smk import logged
from fmriflow.steps import pinned_atlas_step

with logged(snakemake.log[0]):
    where = snakemake.config["atlas"]  # locations only (the rule's comment says why they are no params)
    pinned_atlas_step(snakemake.wildcards.pinned, snakemake.input.reference, snakemake.output.img,
                      snakemake.output.labels, where["pinned_cache_dir"], where["path"])
