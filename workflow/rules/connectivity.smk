rule connectivity:
    """Connectivity matrices of one run and atlas, each kind as TSV (region names) and NPY."""
    input:
        timeseries=timeseries("{run}", "{atlas}"),
    output:
        tsv=[relmat("{run}", "{atlas}", k, ".tsv") for k in RUN_KINDS],
        npy=[relmat("{run}", "{atlas}", k, ".npy") for k in RUN_KINDS],
        dynamic=[relmat("{run}", "{atlas}", "pearson", ".npy", desc="dynamic")] if DYNAMIC else [],
    params:
        **shaping("connectivity.kinds", "connectivity.sliding_window"),
        on_failure=on_failure(),  # qc.continue_on_failure: records instead of a failed job
    log:
        f"{LOGS}/connectivity/{{run}}_atlas-{{atlas}}.log",
    script:
        "../scripts/connectivity.py"


rule group_connectivity:
    """Fisher-z mean Pearson FC over runs and the difference between the two groups of report.group_column."""
    input:
        **pooled("atlas-{atlas}_desc-relmat"),  # every run's matrices and the QC table: the included runs' are read
        participants=PARTICIPANTS,
    output:
        mean=group_file("{atlas}", STAT["pearson"], "mean"),
        diff=group_file("{atlas}", STAT["pearson"], "groupdiff"),
    params:
        runs=list(RUNS),  # the plan's runs (config subjects): the list and QC table may be older and hold more
        group_column=config["report"]["group_column"],
    log:
        f"{LOGS}/connectivity/group_atlas-{{atlas}}.log",
    script:
        "../scripts/group_connectivity.py"


rule connectivity_stack:
    """Runs x regions x regions stack of one per-run kind (a modelling input), with its row table."""
    input:
        **pooled("atlas-{atlas}_desc-relmat"),
        participants=PARTICIPANTS,
    output:
        stack=group_file("{atlas}", "{stat}", "stack", extension=".npy"),
        runs=group_file("{atlas}", "{stat}", "stack", suffix="runs"),
    params:
        runs=list(RUNS),
        **shaping("connectivity.fisher_z"),
    wildcard_constraints:
        stat="|".join(STAT[k] for k in RUN_KINDS),
    log:
        f"{LOGS}/connectivity/stack_atlas-{{atlas}}_stat-{{stat}}.log",
    script:
        "../scripts/connectivity_stack.py"


rule tangent_stack:
    """Tangent-space connectivity of every run around the group geometric mean (all runs)."""
    input:
        **pooled("atlas-{atlas}_desc-timeseries"),
        participants=PARTICIPANTS,
    output:
        stack=group_file("{atlas}", STAT["tangent"], "stack", extension=".npy"),
        runs=group_file("{atlas}", STAT["tangent"], "stack", suffix="runs"),
        reference=group_file("{atlas}", STAT["tangent"], "reference", extension=".npy"),
    params:
        runs=list(RUNS),
        **shaping("connectivity.fisher_z"),
    log:
        f"{LOGS}/connectivity/stack_atlas-{{atlas}}_stat-tangent.log",
    script:
        "../scripts/connectivity_stack.py"
