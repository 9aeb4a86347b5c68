# preproc.mode: derivatives -- ingest fMRIPrep outputs that already exist.
# The fmriprep and lite modes add rules here that write the same fMRIPrep-shaped files.


rule preproc_derivatives:
    """Check one run's fMRIPrep outputs (grid, TR against the raw data, confounds) and write its QC row."""
    input:
        bold=fmriprep_file("bold"),
        mask=fmriprep_file("mask"),
        confounds=fmriprep_file("confounds"),
        raw_bold=lambda wildcards: RUNS[wildcards.run],
        manifest=rules.bids.output.manifest,
    output:
        qc=out("{run}", desc="preproc", suffix="qc", extension=".tsv"),
    log:
        f"{LOGS}/preproc/{{run}}.log",
    script:
        "../scripts/preproc_derivatives.py"
