from fmriflow.connectivity import STAT
from fmriflow.smk import logged
from fmriflow.steps import stack_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    kind = {stat: kind for kind, stat in STAT.items()}[snakemake.wildcards.get("stat", STAT["tangent"])]
    stack_step(kind, snakemake.params.runs, list(i.matrices), i.participants, o.stack, o.runs,
               **snakemake.params.config["connectivity"], out_reference=o.get("reference"))
