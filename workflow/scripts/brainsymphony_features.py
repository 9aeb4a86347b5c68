from pathlib import Path

from fmriflow.finetune.symphony import features_step
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    features_step(snakemake.input.model, snakemake.params.dataset, str(Path(snakemake.output.samples).parent),
                  sc_dir=snakemake.params.sc_dir, networks=snakemake.input.get("networks"))
