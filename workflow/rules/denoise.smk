rule denoise:
    """Regress the configured nilearn confound strategy out of every in-mask voxel."""
    input:
        bold=rules.resample.output.bold,
        mask=rules.resample.output.mask,
        fmriprep_bold=fmriprep_file("bold"),
        confounds=fmriprep_file("confounds"),
    output:
        bold=grid("{run}", desc="denoised", suffix="bold", extension=".nii.gz"),
    resources:
        mem_mb=4000,
    log:
        f"{LOGS}/denoise/{{run}}.log",
    script:
        "../scripts/denoise.py"
