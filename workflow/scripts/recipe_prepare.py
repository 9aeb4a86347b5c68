from pathlib import Path

from fmriflow.bundle.recipe_step import prepare_regions_step, prepare_voxels_step
from fmriflow.runfiles import included
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    out = str(Path(snakemake.output.index).parent)
    if p.plan["kind"] == "regions":  # the runs QC includes, as the dataset step
        runs, series = included(i.files, i.run_qc, "timeseries", p.runs)
        prepare_regions_step(i.card, p.plan["atlas"], i.labels, runs, series, p.splits, out)
    else:
        runs, bolds = included(i.files, i.run_qc, "bold", p.runs)
        _, masks = included(i.files, i.run_qc, "mask", p.runs)
        denoised = dict(zip(p.runs, i.denoised))  # the plan's runs, in the order the rule listed them
        prepare_voxels_step(i.card, runs, bolds, masks, p.splits, out, [denoised[r] for r in runs])
