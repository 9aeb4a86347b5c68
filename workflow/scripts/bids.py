from fmriflow.smk import logged
from fmriflow.steps import bids_step

with logged(snakemake.log[0]):
    bids_step(
        snakemake.params.bids_dir,
        snakemake.output.manifest,
        snakemake.output.validation,
        validate=snakemake.params.config["bids"]["validate"],
        fail_on_errors=snakemake.params.config["bids"]["fail_on_errors"],
    )
