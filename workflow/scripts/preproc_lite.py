from fmriflow.smk import logged, per_run
from fmriflow.steps import preproc_lite_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    per_run(snakemake, lambda: preproc_lite_step(i.raw_bold, i.atlas, o.bold, o.mask, o.confounds, snakemake.params.root,
                                                 preproc=snakemake.params.config["preproc"]))
