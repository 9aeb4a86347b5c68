from fmriflow.provenance import write_sidecar
from fmriflow.report import build_report
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i, html = snakemake.input, snakemake.output.html
    build_report(
        html,
        participants=i.participants,
        manifest=i.manifest,
        validation=i.validation,
        qc=list(i.qc),
        coverage=list(i.coverage),
        group_fc=i.group_fc,
        group_diff=i.group_diff,
        ground_truth_edges=i.ground_truth[0] if i.ground_truth else None,
        config=snakemake.params.config,
    )
    write_sidecar(html, "report", list(i), config=snakemake.params.config["report"])
