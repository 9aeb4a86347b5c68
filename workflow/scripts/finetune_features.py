from pathlib import Path

from fmriflow.finetune.run import features_step
from fmriflow.finetune.settings import FinetuneSettings
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    settings = FinetuneSettings.from_config(snakemake.params.config["finetune"])
    features_step(snakemake.params.dataset, snakemake.input.model, snakemake.input.coords,
                  str(Path(snakemake.output.fc).parent), seed=settings.seed, device=settings.train.device)
