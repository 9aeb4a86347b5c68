rule denoise:
    """Regress the configured XCP-D strategy out of every in-mask voxel (with scrubbing and filtering); QC row."""
    input:
        unpack(fmriprep_files("confounds")),
        bold=rules.resample.output.bold,
        mask=rules.resample.output.mask,
    output:
        bold=grid("{run}", desc="denoised", suffix="bold", extension=".nii.gz"),
        qc=grid("{run}", desc="denoised", suffix="qc", extension=".tsv"),
    params:
        **shaping("denoise", "qc.min_degrees_of_freedom"),  # a strategy leaving fewer is refused
        on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
    resources:
        mem_mb=mem_from_inputs(4000, 10),
    log:
        f"{LOGS}/denoise/{{run}}.log",
    script:
        "../scripts/denoise.py"
