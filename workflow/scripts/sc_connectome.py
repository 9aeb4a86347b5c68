from fmriflow.sc.connectome import prepare_connectome
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    sc = snakemake.params.sc
    prepare_connectome(snakemake.input.source, snakemake.output[0], snakemake.input.labels, atlas=sc["atlas"],
                       measure=sc["measure"], transform=sc["transform"], volumes=snakemake.input.get("volumes"),
                       parameters=sc)
