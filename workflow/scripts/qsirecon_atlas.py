from fmriflow.sc.qsirecon import write_atlas_dataset
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    write_atlas_dataset(snakemake.input.image, snakemake.input.labels, snakemake.params.atlas,
                        snakemake.params.root, source_space=snakemake.params.source_space)
