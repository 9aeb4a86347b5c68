rule report:
    """One self-contained HTML page: data, QC and exclusions, coverage, connectivity, training, provenance."""
    input:
        unpack(report_data_inputs),  # manifest, validation, QC rows, coverage; BOLD files of the voxel steps
        participants=PARTICIPANTS,
        run_qc=run_qc_table(),
        atlas_labels=atlas_labels(ATLAS),
        group_fc=group_file(ATLAS, STAT["pearson"], "mean"),
        group_diff=group_file(ATLAS, STAT["pearson"], "groupdiff"),
        ground_truth=ground_truth(),
        pretrain=[rules.pretrain.output.metrics] if PRETRAIN["enabled"] else [],
        voxel=list(voxel_metrics().values()),
        finetune_table=[rules.finetune_table.output.table] if FINETUNE["enabled"] else [],
        predictions=finetune_outputs(rules.finetune.output.predictions),
        encoder=bundle_files(ENCODER) if ENCODER else [],  # finetune.encoder's card, in the Pretraining section
        text=list(text_report_files().values()),  # vq-align runs and the language model's scores
        recipes=[recipe_prepared(name)[2] for name in RECIPE_PLANS],  # each released model's recipe, as done
    output:
        html=report(f"{OUT}/report/fmriflow_report.html", caption="../report/report.rst", category="Report"),
        figures=report(directory(f"{OUT}/report/figures"), patterns=["{figure}.png"], caption="../report/figure.rst",
                       category="Figures", labels={"figure": "{figure}"}),
    params:
        **shaping_all(),  # its provenance section shows the whole resolved config
        runs=list(RUNS),
        voxel_names=list(voxel_metrics()),
        text_names=list(text_report_files()),
        recipe_names=list(RECIPE_PLANS),
    log:
        f"{LOGS}/report/report.log",
    script:
        "../scripts/report.py"
