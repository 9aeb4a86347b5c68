from pathlib import Path

from fmriflow.finetune.region_probe import probe_step
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    probe_step(snakemake.input.model, p.dataset, Path(snakemake.output.regions).parent,
               networks=snakemake.input.get("networks"), sc_dir=p.sc_dir, max_windows=p.windows, n_folds=p.folds,
               seed=p.seed)
