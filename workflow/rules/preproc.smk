# Preprocessed BOLD on the way to the atlas grid. preproc.mode picks where it comes from:
#   derivatives  fMRIPrep outputs that already exist (preproc.derivatives_dir)
#   fmriprep     fMRIPrep 25.2 in its container, one job per subject -> <output_dir>/fmriprep
#   lite         minimal preprocessing with ANTsPy + nilearn, one job per run -> <output_dir>/preproc-lite
# Whatever the mode, preproc_derivatives then checks each run's files against the raw data.

rule preproc_derivatives:
    """Check one run's fMRIPrep outputs (grid, TR against the raw data, confounds) and write its QC row."""
    input:
        unpack(preproc_check_inputs),  # bold, mask, confounds, raw_bold, sidecars (its own, not the manifest)
    output:
        qc=out("{run}", desc="preproc", suffix="qc", extension=".tsv"),
    params:
        **shaping("preproc.mode", "qc.fd_threshold"),
        on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
    log:
        f"{LOGS}/preproc/{{run}}.log",
    script:
        "../scripts/preproc_derivatives.py"


if MODE == "fmriprep":
    # One rule per subject: each declares exactly the files its subject's runs need (sessions,
    # tasks and runs differ between subjects), so the DAG is complete before fMRIPrep ran.
    for _subject, _files in subject_outputs(FMRIPREP_DIR, RUNS).items():

        rule:
            name:
                f"fmriprep_{_subject}"
            input:
                # its own raw files: another subject's change does not rerun it. The validator runs
                # beside it, in the bids rule (fMRIPrep runs with --skip-bids-validation), and stops
                # the group steps when it fails (run QC waits for it).
                raw=subject_raw_files(_subject),
            output:
                _files,
            params:
                command=fmriprep_shell_command(_subject),
                dirs=f"{FMRIPREP_WORK}/sub-{_subject} {FMRIPREP_DIR}",
            threads: FMRIPREP["threads"]
            resources:
                mem_mb=FMRIPREP["mem_mb"],
                runtime=FMRIPREP["runtime_minutes"],
            log:
                f"{LOGS}/fmriprep/sub-{_subject}.log",
            # none of Snakemake's: the command starts fMRIPrep's own image (binds, --cleanenv)
            container:
                None
            shell:
                "mkdir -p {params.dirs} && {params.command} > {log} 2>&1"


if MODE == "lite":
    rule preproc_lite:
        """Head-motion correction, registration to the MNI template, confounds (ANTsPy + nilearn)."""
        input:
            raw_bold=lambda wildcards: RUNS[wildcards.run],
            atlas=atlas_img(ATLAS),  # the output grid
            sidecars=lambda wildcards: raw_sidecars(wildcards.run),
        output:
            bold=str(LITE_FILES.bold),
            mask=str(LITE_FILES.mask),
            confounds=str(LITE_FILES.confounds),
            sidecar=str(LITE_FILES.confounds.with_suffix(".json")),
            boldref=str(boldref_path(LITE_FILES)),
        params:
            root=f"{OUT}/{LITE_ROOT}",
            **shaping("preproc.mode", "preproc.lite"),
            on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
        threads: config["preproc"]["lite"]["threads"]
        resources:
            mem_mb=mem_from_inputs(6000, 12),
        log:
            f"{LOGS}/preproc_lite/{{run}}.log",
        script:
            "../scripts/preproc_lite.py"
