from fmriflow.smk import logged
from fmriflow.steps import voxel_dataset_step

with logged(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    voxel_dataset_step(p.runs, list(i.bold), list(i.mask), p.splits, snakemake.wildcards.geometry,
                       snakemake.output.card, **p.config["voxel"])
