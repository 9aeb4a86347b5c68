rule report:
    """One self-contained HTML page: data, QC and exclusions, coverage, connectivity, training, provenance."""
    input:
        participants=f"{BIDS_DIR}/participants.tsv",
        manifest=rules.bids.output.manifest,
        validation=rules.bids.output.validation,
        qc=expand(rules.preproc_derivatives.output.qc, run=RUNS),
        coverage=[grid(r, atlas=ATLAS, stat="coverage", suffix="bold", extension=".tsv") for r in RUNS],
        run_qc=run_qc_table(),
        # per run, in RUNS order: FD traces of every run; tSNR maps and carpet plots of a few (report/runqc.py)
        confounds=lambda wildcards: [str(PREPROC[r].confounds) for r in RUNS],
        bold=expand(rules.resample.output.bold, run=RUNS),
        mask=expand(rules.resample.output.mask, run=RUNS),
        denoised=expand(rules.denoise.output.bold, run=RUNS),
        atlas_image=atlas_img(ATLAS),
        atlas_labels=atlas_labels(ATLAS),
        group_fc=group_file(ATLAS, STAT["pearson"], "mean"),
        group_diff=group_file(ATLAS, STAT["pearson"], "groupdiff"),
        ground_truth=ground_truth(),
        pretrain=[rules.pretrain.output.metrics] if PRETRAIN["enabled"] else [],
        voxel=list(voxel_metrics().values()),
        finetune_table=[rules.finetune_table.output.table] if FINETUNE["enabled"] else [],
        predictions=finetune_outputs(rules.finetune.output.predictions),
    output:
        html=report(f"{OUT}/report/fmriflow_report.html", caption="../report/report.rst", category="Report"),
        figures=report(directory(f"{OUT}/report/figures"), patterns=["{figure}.png"], caption="../report/figure.rst",
                       category="Figures", labels={"figure": "{figure}"}),
    params:
        config=config,  # its provenance section shows the whole resolved config
        runs=list(RUNS),
        voxel_names=list(voxel_metrics()),
    log:
        f"{LOGS}/report/report.log",
    script:
        "../scripts/report.py"
