# input.mode: timeseries. Ready-made region time series (XCP-D, C-PAC / ABIDE-Preprocessed, plain
# TSV/CSV/NPY) take the place of the voxel steps: no BIDS validation, preprocessing, resampling,
# denoising or parcellation. Each run's file is checked and written where parcellation writes
# its time series, with a coverage table and a QC row, so run QC, connectivity, the dataset, the
# models and the report read them unchanged (src/fmriflow/timeseries).

if TIMESERIES:

    # parcellate names the same files; here they come from the input instead
    ruleorder: timeseries_run > parcellate
    # and the atlas rule A424's table, when the input's atlas is A424 (so that a bundle pretrained
    # here fits a raw-BIDS project, whose atlas is A424 by that name)
    ruleorder: timeseries_atlas > atlas

    rule timeseries_atlas:
        """The input atlas's table (index, name, MNI x, y, z): from the coordinates table, or label-image centroids."""
        input:
            [config["input"]["timeseries"][k] for k in ("coordinates", "labels_image", "labels_table")
             if config["input"]["timeseries"][k]],
        output:
            labels=atlas_labels(ATLAS),
        params:
            **shaping("input.timeseries.atlas", "input.timeseries.coordinates", "input.timeseries.labels_image",
                      "input.timeseries.labels_table"),
        log:
            f"{LOGS}/atlas/atlas-{ATLAS}.log",
        script:
            "../scripts/timeseries_atlas.py"

    rule timeseries_run:
        """One run's region time series checked against the atlas (shape, finite, regions, TR); coverage and QC row."""
        input:
            source=lambda wildcards: timeseries_sources(wildcards.run),  # the file, its JSON sidecar, XCP-D's motion
            atlas=rules.timeseries_atlas.output.labels,
        output:
            timeseries=timeseries("{run}", ATLAS),
            coverage=coverage_table("{run}"),
            qc=input_qc("{run}"),
        params:
            **shaping("input.timeseries.format", "input.timeseries.atlas", "input.timeseries.repetition_time",
                      "qc.fd_threshold"),
            on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
        log:
            f"{LOGS}/timeseries/{{run}}.log",
        script:
            "../scripts/timeseries_run.py"

    rule timeseries_manifest:
        """Every input file with its sha256, shape and TR; the problems found (each run's own job stops on its own)."""
        input:
            list(RUNS.values()),
        output:
            manifest=f"{OUT}/timeseries/manifest.tsv",
            validation=f"{OUT}/timeseries/validation.json",
        params:
            runs=RUNS,
            **shaping("input.timeseries.format", "input.timeseries.atlas", "input.timeseries.repetition_time"),
        log:
            f"{LOGS}/timeseries/manifest.log",
        script:
            "../scripts/timeseries_manifest.py"
