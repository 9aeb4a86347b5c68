rule parcellate:
    """Region time series (time x region, one column per label) and coverage, every atlas from one read."""
    input:
        bold=rules.denoise.output.bold,
        mask=rules.resample.output.mask,
        atlases=[atlas_img(a) for a in ATLASES],
        labels=[atlas_labels(a) for a in ATLASES],
    output:
        timeseries=[timeseries("{run}", a) for a in ATLASES],
        coverage=[grid("{run}", atlas=a, stat="coverage", suffix="bold", extension=".tsv") for a in ATLASES],
    params:
        **shaping("parcellate"),
        on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
    resources:
        mem_mb=mem_from_inputs(1000, 6),
    log:
        f"{LOGS}/parcellate/{{run}}.log",
    script:
        "../scripts/parcellate.py"
