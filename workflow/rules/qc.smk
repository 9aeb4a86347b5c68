# Run QC and exclusion. The rules that pool runs (group FC, the connectivity stacks, the
# model-ready datasets) take two inputs: a list of every run's files (run_files, below) and the
# run QC table, and read the files of the runs the table includes (fmriflow.runfiles.included).
# So excluded runs are left out of the pooled artefacts and their provenance, `snakemake -n`
# shows every job before QC has run, and no checkpoint makes Snakemake post-process the whole
# DAG a second time (a noticeable part of the plan at thousands of runs).
# With qc.continue_on_failure a run whose per-run step failed arrives as failure records
# (fmriflow.failure): its row names the step and the error, and it is excluded like any other.


rule run_qc:
    """Every run's motion, censoring, DVARS, tSNR and region coverage; excluded runs with their reasons."""
    input:
        qc=run_qc_rows(),  # the denoise step's rows, or (input.mode timeseries) the ingestion's
        coverage=[coverage_table(r) for r in RUNS],
        validation=validated(),
    output:
        table=run_qc_table(),
    params:
        runs=list(RUNS),
        **shaping("qc"),
    log:
        f"{LOGS}/qc/run_qc.log",
    script:
        "../scripts/run_qc.py"


rule run_files:
    """Every run's files of one kind (connectivity matrices, time series, BOLD on the grid) with their sha256."""
    input:
        unpack(run_list_input),  # role -> every run's file: Snakemake makes and updates each
    output:
        listing=run_list("{listing}"),
    params:
        runs=list(RUNS),
    wildcard_constraints:
        listing="|".join(RUN_LISTS),
    localrule: True  # reads and hashes files, no compute: not worth a cluster job
    log:
        f"{LOGS}/qc/files_{{listing}}.log",
    script:
        "../scripts/run_files.py"
