from pathlib import Path

from fmriflow.finetune.run import setup_step
from fmriflow.finetune.settings import FinetuneSettings
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i = snakemake.input
    settings = FinetuneSettings.from_config(snakemake.params.config["finetune"])
    symphony = i.get("symphony")  # BrainSymphony's features (brainsymphony.enabled), else none
    setup_step(snakemake.wildcards.setup, snakemake.params.dataset, str(Path(i.features[0]).parent), i.participants,
               i.model, i.coords, str(Path(snakemake.output.metrics).parent), settings, workers=snakemake.threads,
               symphony_dir=str(Path(symphony[0]).parent) if symphony else None,
               recipe_dirs=dict(snakemake.params.recipe_dirs),  # the released models' recipes (config recipes)
               # how BrainSymphony's fused row is made (present only while brainsymphony.enabled)
               symphony_fusion=snakemake.params.config.get("brainsymphony", {}).get("fusion", "mean"))
