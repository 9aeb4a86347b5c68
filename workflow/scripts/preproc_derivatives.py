from fmriflow.preproc import PreprocFiles
from fmriflow.smk import logged, per_run
from fmriflow.steps import preproc_derivatives_step

with logged(snakemake.log[0]):
    i = snakemake.input
    per_run(snakemake, lambda: preproc_derivatives_step(
        snakemake.wildcards.run,
        PreprocFiles(i.bold, i.mask, i.confounds),
        i.raw_bold,
        list(i.sidecars),
        snakemake.output.qc,
        preproc=snakemake.params.config["preproc"],
        fd_threshold=snakemake.params.config["qc"]["fd_threshold"],
    ))
