from fmriflow.connectivity import STAT
from fmriflow.runfiles import included
from fmriflow.smk import logged
from fmriflow.steps import stack_step

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    kind = {stat: kind for kind, stat in STAT.items()}[snakemake.wildcards.get("stat", STAT["tangent"])]
    # the runs QC includes: per-run NPY matrices, or (tangent) the time series
    runs, files = included(i.files, i.run_qc, "timeseries" if kind == "tangent" else f"{kind}_npy",
                           snakemake.params.runs)
    stack_step(kind, runs, files, i.participants, o.stack, o.runs,
               **snakemake.params.config["connectivity"], out_reference=o.get("reference"))
