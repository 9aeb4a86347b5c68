rule bids:
    """Validate the raw dataset and list every file with its sha256, TR and shape."""
    input:
        f"{BIDS_DIR}/dataset_description.json",
    output:
        manifest=f"{OUT}/bids/manifest.tsv",
        validation=f"{OUT}/bids/validation.json",
    params:
        bids_dir=BIDS_DIR,
        listing=raw_listing,  # every raw file's name, size and time: reruns on any raw change
        **shaping("bids"),
    log:
        f"{LOGS}/bids/bids.log",
    script:
        "../scripts/bids.py"


rule dataset_description:
    """The derivatives root's dataset_description.json (GeneratedBy, ConfigurationHash)."""
    output:
        f"{DERIV}/dataset_description.json",
    params:
        **shaping_all(),  # its ConfigurationHash is the hash of the whole resolved config
    log:
        f"{LOGS}/bids/dataset_description.log",
    script:
        "../scripts/dataset_description.py"
