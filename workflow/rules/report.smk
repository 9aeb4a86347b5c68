def ground_truth():
    path = config["report"]["ground_truth"]
    return [path] if path and Path(path).is_file() else []


rule report:
    """One self-contained HTML page: data, QC, coverage, connectivity, provenance."""
    input:
        participants=f"{BIDS_DIR}/participants.tsv",
        manifest=rules.bids.output.manifest,
        validation=rules.bids.output.validation,
        qc=expand(rules.preproc_derivatives.output.qc, run=RUNS),
        coverage=expand(rules.parcellate.output.coverage, run=RUNS),
        group_fc=rules.group_connectivity.output.mean,
        group_diff=rules.group_connectivity.output.diff,
        ground_truth=ground_truth(),
    output:
        html=report(f"{OUT}/report/fmriflow_report.html", caption="../report/report.rst", category="Report"),
    log:
        f"{LOGS}/report/report.log",
    script:
        "../scripts/report.py"
