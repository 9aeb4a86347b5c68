rule atlas:
    """A424: fetched (or taken from atlas.path / FMRIFLOW_ATLAS_DIR), verified by sha256, recorded."""
    output:
        img=atlas_img("A424"),
        labels=atlas_labels("A424"),
    # no params: where the atlas is found does not shape it (its sha256 is checked), so moving
    # the cache must not rerun it and, through its new mtime, every step after it
    log:
        f"{LOGS}/atlas/atlas-A424.log",
    script:
        "../scripts/atlas.py"


rule extra_atlas:
    """A user's label atlas (atlas.extra), checked and put on the A424 grid (nearest neighbour)."""
    input:
        image=lambda wildcards: EXTRA_ATLASES[wildcards.extra]["image"],
        labels=lambda wildcards: EXTRA_ATLASES[wildcards.extra]["labels"],
        reference=atlas_img("A424"),
    output:
        img=atlas_img("{extra}"),
        labels=atlas_labels("{extra}"),
    wildcard_constraints:
        extra="|".join(EXTRA_ATLASES) or "(?!x)x",  # matches nothing when there are no extra atlases
    log:
        f"{LOGS}/atlas/atlas-{{extra}}.log",
    script:
        "../scripts/extra_atlas.py"


rule pinned_atlas:
    """A pinned third-party atlas (atlas.pinned: Tian S3, Schaefer-400 + Tian S3), fetched (or taken from
    atlas.path / FMRIFLOW_ATLAS_DIR), verified by sha256, on the A424 grid, with names and MNI centroids."""
    input:
        reference=atlas_img("A424"),
    output:
        img=atlas_img("{pinned}"),
        labels=atlas_labels("{pinned}"),
    # no params, as rule atlas: where the files are found does not shape them (their sha256 is checked)
    wildcard_constraints:
        pinned="|".join(PINNED_ATLASES) or "(?!x)x",  # matches nothing when no pinned atlas is asked for
    log:
        f"{LOGS}/atlas/atlas-{{pinned}}.log",
    script:
        "../scripts/pinned_atlas.py"
