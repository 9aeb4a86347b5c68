from fmriflow.smk import logged
from fmriflow.timeseries.steps import atlas_step

with logged(snakemake.log[0]):
    section = snakemake.params.config["input"]["timeseries"]
    atlas_step(snakemake.output.labels, **section)
