rule atlas:
    """Fetch (or take from atlas.path / FMRIFLOW_ATLAS_DIR), verify and record the atlas."""
    output:
        img=ATLAS_IMG,
        labels=ATLAS_LABELS,
    params:
        cache_dir=config["atlas"]["cache_dir"],
        local_dir=config["atlas"]["path"],
    log:
        f"{LOGS}/atlas/atlas-{ATLAS}.log",
    script:
        "../scripts/atlas.py"
