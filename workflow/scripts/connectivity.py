from fmriflow.smk import logged, per_run
from fmriflow.steps import connectivity_step

with logged(snakemake.log[0]):
    o = snakemake.output
    per_run(snakemake, lambda: connectivity_step(snakemake.input.timeseries, list(o.tsv), list(o.npy),
                                                 **snakemake.params.config["connectivity"],
                                                 out_dynamic=o.dynamic[0] if o.dynamic else None))
