from fmriflow.smk import logged, per_run
from fmriflow.steps import parcellate_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    atlases = list(zip(i.atlases, i.labels))
    per_run(snakemake, lambda: parcellate_step(i.bold, i.mask, atlases, list(o.timeseries), list(o.coverage),
                                               **snakemake.params.config["parcellate"]))
