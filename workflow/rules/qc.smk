# Run QC and exclusion. `run_qc` is a checkpoint: the rules that pool runs (group FC, the
# connectivity stacks, the model-ready dataset) take their inputs from included_runs(), which
# reads its table. A plain input function could not: the table does not exist when the DAG is
# first built, and a checkpoint makes Snakemake re-evaluate those rules' inputs once it does,
# so excluded runs are absent from their inputs (not just skipped inside a script), and
# `snakemake -n` shows the per-run work for every run before QC has run.
# With qc.continue_on_failure a run whose per-run step failed arrives as failure records
# (fmriflow.failure): its row names the step and the error, and it is excluded like any other.


checkpoint run_qc:
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
