from fmriflow.smk import logged
from fmriflow.steps import run_qc_step

with logged(snakemake.log[0]):
    i = snakemake.input
    run_qc_step(snakemake.params.runs, list(i.qc), list(i.coverage), snakemake.output.table,
                **snakemake.params.config["qc"])
