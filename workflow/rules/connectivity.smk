rule connectivity:
    """Pearson FC between all atlas regions of one run."""
    input:
        timeseries=rules.parcellate.output.timeseries,
    output:
        relmat=grid("{run}", atlas=ATLAS, stat="pearsoncorrelation", suffix="relmat", extension=".tsv"),
    log:
        f"{LOGS}/connectivity/{{run}}.log",
    script:
        "../scripts/connectivity.py"


def group_fc(desc):
    return f"{DERIV}/group/" + naming.entities_name(
        space=naming.TEMPLATE_SPACE, res=naming.TEMPLATE_RES, atlas=ATLAS, stat="pearsoncorrelation",
        desc=desc, suffix="relmat", extension=".tsv",
    )


rule group_connectivity:
    """Fisher-z mean FC over runs and the difference between the two groups of report.group_column."""
    input:
        relmats=expand(rules.connectivity.output.relmat, run=RUNS),
        participants=f"{BIDS_DIR}/participants.tsv",
    output:
        mean=group_fc("mean"),
        diff=group_fc("groupdiff"),
    params:
        group_column=config["report"]["group_column"],
    log:
        f"{LOGS}/connectivity/group.log",
    script:
        "../scripts/group_connectivity.py"
