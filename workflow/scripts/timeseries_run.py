from fmriflow.smk import logged, per_run
from fmriflow.timeseries.steps import ingest_step

with logged(snakemake.log[0]):
    i, o, config = snakemake.input, snakemake.output, snakemake.params.config
    section = config["input"]["timeseries"]
    per_run(snakemake, lambda: ingest_step(snakemake.wildcards.run, i.source[0], section["format"], i.atlas, o.timeseries,
                                           o.coverage, o.qc, atlas=section["atlas"],
                                           repetition_time=section["repetition_time"],
                                           fd_threshold=config["qc"]["fd_threshold"]))
