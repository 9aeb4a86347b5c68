from fmriflow.runfiles import included
from fmriflow.smk import logged
from fmriflow.steps import voxel_dataset_step

with logged(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    runs, bolds = included(i.files, i.run_qc, "bold", p.runs)  # the runs QC includes, as the region dataset
    _, masks = included(i.files, i.run_qc, "mask", p.runs)
    voxel_dataset_step(runs, bolds, masks, p.splits, snakemake.wildcards.geometry, snakemake.output.card,
                       **p.config["voxel"])
