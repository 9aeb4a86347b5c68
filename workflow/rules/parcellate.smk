rule parcellate:
    """Region time series (time x region, one column per atlas label) and per-region coverage."""
    input:
        bold=rules.denoise.output.bold,
        mask=rules.resample.output.mask,
        atlas=ATLAS_IMG,
        labels=ATLAS_LABELS,
    output:
        timeseries=grid("{run}", atlas=ATLAS, stat=config["parcellate"]["strategy"], suffix="timeseries", extension=".tsv"),
        coverage=grid("{run}", atlas=ATLAS, stat="coverage", suffix="bold", extension=".tsv"),
    resources:
        mem_mb=3000,
    log:
        f"{LOGS}/parcellate/{{run}}.log",
    script:
        "../scripts/parcellate.py"
