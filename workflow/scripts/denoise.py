from fmriflow.smk import logged, per_run
from fmriflow.steps import denoise_step

with logged(snakemake.log[0]):
    i, o, config = snakemake.input, snakemake.output, snakemake.params.config
    per_run(snakemake, lambda: denoise_step(snakemake.wildcards.run, i.bold, i.mask, i.confounds, o.bold, o.qc,
                                            min_degrees_of_freedom=config["qc"]["min_degrees_of_freedom"],
                                            **config["denoise"]))
