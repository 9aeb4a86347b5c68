from fmriflow.smk import logged
from fmriflow.steps import parcellate_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    atlases = list(zip(i.atlases, i.labels))
    parcellate_step(i.bold, i.mask, atlases, list(o.timeseries), list(o.coverage),
                    **snakemake.params.config["parcellate"])
