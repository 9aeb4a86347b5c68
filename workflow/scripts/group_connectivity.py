from fmriflow.runfiles import included
from fmriflow.smk import logged
from fmriflow.steps import group_connectivity_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    _, relmats = included(i.files, i.run_qc, "pearson_tsv", snakemake.params.runs)  # the runs QC includes
    group_connectivity_step(relmats, i.participants, snakemake.params.group_column, o.mean, o.diff)
