rule resample:
    """BOLD and brain mask on the atlas grid; a link when the grid already matches."""
    input:
        unpack(fmriprep_files("bold", "mask")),
        atlas=atlas_img(ATLAS),
        qc=rules.preproc_derivatives.output.qc,
    output:
        bold=grid("{run}", desc="preproc", suffix="bold", extension=".nii.gz"),
        mask=grid("{run}", desc="brain", suffix="mask", extension=".nii.gz"),
    params:
        on_failure=on_failure(),
    resources:
        mem_mb=mem_from_inputs(3000, 10),
    log:
        f"{LOGS}/resample/{{run}}.log",
    script:
        "../scripts/resample.py"
