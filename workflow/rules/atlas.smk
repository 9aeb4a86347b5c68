rule atlas:
    """A424: fetched (or taken from atlas.path / FMRIFLOW_ATLAS_DIR), verified by sha256, recorded."""
    output:
        img=atlas_img(ATLAS),
        labels=atlas_labels(ATLAS),
    params:
        cache_dir=config["atlas"]["cache_dir"],
        local_dir=config["atlas"]["path"],
    log:
        f"{LOGS}/atlas/atlas-{ATLAS}.log",
    script:
        "../scripts/atlas.py"


rule extra_atlas:
    """A user's label atlas (atlas.extra), checked and put on the A424 grid (nearest neighbour)."""
    input:
        image=lambda wildcards: EXTRA_ATLASES[wildcards.extra]["image"],
        labels=lambda wildcards: EXTRA_ATLASES[wildcards.extra]["labels"],
        reference=atlas_img(ATLAS),
    output:
        img=atlas_img("{extra}"),
        labels=atlas_labels("{extra}"),
    wildcard_constraints:
        extra="|".join(EXTRA_ATLASES) or "(?!x)x",  # matches nothing when there are no extra atlases
    log:
        f"{LOGS}/atlas/atlas-{{extra}}.log",
    script:
        "../scripts/extra_atlas.py"
