from fmriflow.runfiles import list_step
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i = snakemake.input
    list_step(snakemake.params.runs, {role: list(i[role]) for role in i.keys()}, snakemake.output.listing)
