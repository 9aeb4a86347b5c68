from fmriflow.smk import logged
from fmriflow.steps import group_connectivity_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    group_connectivity_step(list(i.relmats), i.participants, snakemake.params.group_column, o.mean, o.diff)
