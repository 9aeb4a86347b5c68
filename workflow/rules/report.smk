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
        coverage=[grid(r, atlas=ATLAS, stat="coverage", suffix="bold", extension=".tsv") for r in RUNS],
        group_fc=group_file(ATLAS, STAT["pearson"], "mean"),
        group_diff=group_file(ATLAS, STAT["pearson"], "groupdiff"),
        ground_truth=ground_truth(),
    output:
        html=report(f"{OUT}/report/fmriflow_report.html", caption="../report/report.rst", category="Report"),
    params:
        config=config,  # its provenance section shows the whole resolved config
    log:
        f"{LOGS}/report/report.log",
    script:
        "../scripts/report.py"
