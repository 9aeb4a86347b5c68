# Config validation, run discovery and the small input functions the rules share.

import re
from pathlib import Path

from snakemake.utils import validate

from fmriflow import naming
from fmriflow.ingest import discover_runs
from fmriflow.preproc import locate_run


validate(config, "../schemas/config.schema.yaml", set_default=True)

OUT = config["output_dir"]
DERIV = f"{OUT}/fmriflow"
LOGS = f"{OUT}/logs"
BIDS_DIR = config["bids_dir"]
ATLAS = config["atlas"]["name"]
ATLAS_DIR = f"{DERIV}/atlases/atlas-{ATLAS}"
ATLAS_IMG = f"{ATLAS_DIR}/atlas-{ATLAS}_space-{naming.TEMPLATE_SPACE}_res-{naming.TEMPLATE_RES}_dseg.nii.gz"
ATLAS_LABELS = f"{ATLAS_DIR}/atlas-{ATLAS}_dseg.tsv"

if not Path(BIDS_DIR).is_dir():
    raise WorkflowError(
        f"bids_dir {BIDS_DIR!r} does not exist: set bids_dir in config/config.yaml, "
        "or make the demo dataset with `fmriflow demo-data data/demo`."
    )

# run key (e.g. sub-01/func/sub-01_task-rest) -> raw BOLD path
RUNS = {key: str(path) for key, path in discover_runs(BIDS_DIR, config["subjects"], config["tasks"]).items()}

if config["preproc"]["mode"] == "derivatives":
    if not config["preproc"]["derivatives_dir"]:
        raise WorkflowError("preproc.mode is 'derivatives' but preproc.derivatives_dir is not set")
    PREPROC = {run: locate_run(config["preproc"]["derivatives_dir"], run, config["preproc"]["space"]) for run in RUNS}


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),


def out(run, **entities):
    """A derivative of ``run`` (a run key or the {run} wildcard) under the fmriflow root."""
    return f"{DERIV}/{naming.derivative(run, **entities)}"


def grid(run, **entities):
    """A derivative on the atlas grid (MNI152NLin6Asym, res-2)."""
    return f"{DERIV}/{naming.template_derivative(run, **entities)}"


def fmriprep_file(kind):
    """Input function: the fMRIPrep output ``kind`` (bold, mask, confounds) of a run."""
    return lambda wildcards: str(getattr(PREPROC[wildcards.run], kind))


def all_outputs():
    runs = list(RUNS)
    return [
        f"{DERIV}/dataset_description.json",
        *[grid(r, atlas=ATLAS, stat="pearsoncorrelation", suffix="relmat", extension=".tsv") for r in runs],
        f"{OUT}/report/fmriflow_report.html",
    ]
