from fmriflow.provenance import write_dataset_description
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    write_dataset_description(snakemake.output[0].rsplit("/", 1)[0], dict(snakemake.params.config))
