from pathlib import Path

from fmriflow.finetune.run import setup_step
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i = snakemake.input
    setup_step(snakemake.wildcards.setup, snakemake.params.dataset, str(Path(i.features[0]).parent), i.participants,
               i.model, i.coords, str(Path(snakemake.output.metrics).parent), snakemake.params.config["finetune"])
