from fmriflow.smk import logged
from fmriflow.timeseries.steps import manifest_step

with logged(snakemake.log[0]):
    o, section = snakemake.output, snakemake.params.config["input"]["timeseries"]
    manifest_step(snakemake.params.runs, section["format"], section["atlas"], o.manifest, o.validation,
                  repetition_time=section["repetition_time"])
