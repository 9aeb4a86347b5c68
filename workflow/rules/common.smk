# Config validation, run discovery and the small input functions the rules share.

import copy
import math
import re
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from snakemake.utils import validate

from fmriflow import naming
from fmriflow.checks import check_config
from fmriflow.connectivity import STAT
from fmriflow.ingest import discover_runs
from fmriflow.preproc import preproc_files


check_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml", workflow.configfiles)  # every error, by key
validate(config, "../schemas/config.schema.yaml", set_default=True)


# The project image, used by every rule (with --software-deployment-method apptainer only)
# except those that name their own: fMRIPrep's rules start fMRIPrep's image themselves.
container: config["container"]


# The interpreter of training jobs' shell commands: inside the project image its own python,
# otherwise the one running Snakemake (which has fmriflow installed).
IN_CONTAINER = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
JOB_PYTHON = "python" if IN_CONTAINER and config["container"] else sys.executable

OUT = config["output_dir"]
DERIV = f"{OUT}/fmriflow"
LOGS = f"{OUT}/logs"
BIDS_DIR = config["bids_dir"]
ATLAS = "A424"  # the atlas of the foundation models; config atlas.extra adds others
EXTRA_ATLASES = config["atlas"]["extra"]
ATLASES = [ATLAS, *EXTRA_ATLASES]
KINDS = config["connectivity"]["kinds"]
RUN_KINDS = [k for k in KINDS if k != "tangent"]
DYNAMIC = config["connectivity"]["sliding_window"]["window"] is not None

if not Path(BIDS_DIR).is_dir():
    raise WorkflowError(
        f"bids_dir {BIDS_DIR!r} does not exist: set bids_dir in config/config.yaml, "
        "or make the demo dataset with `fmriflow demo-data data/demo`."
    )

# run key (e.g. sub-01/func/sub-01_task-rest) -> raw BOLD path
RUNS = {key: str(path) for key, path in discover_runs(BIDS_DIR, config["subjects"], config["tasks"]).items()}

# run key -> the fMRIPrep-shaped BOLD, mask and confounds every later step reads: existing files
# (derivatives mode) or the names the fmriprep / lite rules write (workflow/rules/preproc.smk)
PREPROC = preproc_files(config["preproc"], RUNS, OUT)


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),
    atlas="|".join(ATLASES),


def mem_from_inputs(floor_mb, per_input_mb):
    """Resource function: memory of a job that grows with its input files, doubled on a retry.

    ``per_input_mb`` MB per MB of input (a gzipped BOLD series inflates several times when it is
    read and copied as floats); ``floor_mb`` covers small runs. SLURM kills a job that exceeds
    its request, and the SLURM profile's retry then asks for twice as much.
    """

    def mem_mb(wildcards, input, attempt):
        return attempt * max(floor_mb, math.ceil(per_input_mb * input.size_mb))

    return mem_mb


def shaping(*keys, drop=()):
    """The config entries that shape a rule's outputs, given to the rule as ``params.config``.

    Snakemake reruns a job whose params changed since its outputs were made (the ``params``
    rerun trigger); it cannot see what a script reads from ``snakemake.config``. So scripts read
    config only through this subset: a step reruns when an entry it reads changes, and not when
    an unrelated one does. ``keys`` are sections or dotted keys ("qc.fd_threshold"); ``drop``
    removes dotted keys that only size or place the job (memory, GPUs, which set-ups exist).
    Keys are sorted so that reordering the YAML file changes nothing.
    """
    picked = {}
    for key in keys:
        *parents, last = key.split(".")
        source, target = config, picked
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = copy.deepcopy(source[last])
    for key in drop:
        *parents, last = key.split(".")
        node = picked
        for part in parents:
            node = node[part]
        del node[last]
    return _sorted(picked)


def _sorted(value):
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


def out(run, **entities):
    """A derivative of ``run`` (a run key or the {run} wildcard) under the fmriflow root."""
    return f"{DERIV}/{naming.derivative(run, **entities)}"


def grid(run, **entities):
    """A derivative on the atlas grid (MNI152NLin6Asym, res-2)."""
    return f"{DERIV}/{naming.template_derivative(run, **entities)}"


def atlas_img(atlas):
    return f"{DERIV}/atlases/atlas-{atlas}/atlas-{atlas}_space-{naming.TEMPLATE_SPACE}_res-{naming.TEMPLATE_RES}_dseg.nii.gz"


def atlas_labels(atlas):
    return f"{DERIV}/atlases/atlas-{atlas}/atlas-{atlas}_dseg.tsv"


def relmat(run, atlas, kind, extension=".tsv", desc=None):
    """A connectivity matrix of one run (or the {run} wildcard) for an atlas and kind."""
    return grid(run, atlas=atlas, stat=STAT[kind], desc=desc, suffix="relmat", extension=extension)


def group_file(atlas, stat, desc, suffix="relmat", extension=".tsv"):
    """A group-level file for an atlas and a stat label (e.g. STAT["pearson"], or "{stat}")."""
    return f"{DERIV}/group/" + naming.entities_name(
        space=naming.TEMPLATE_SPACE, res=naming.TEMPLATE_RES, atlas=atlas, stat=stat,
        desc=desc, suffix=suffix, extension=extension,
    )


def fmriprep_file(kind):
    """Input function: the fMRIPrep output ``kind`` (bold, mask, confounds) of a run."""
    return lambda wildcards: str(getattr(PREPROC[wildcards.run], kind))


def all_outputs():
    return [
        f"{DERIV}/dataset_description.json",
        *[relmat(r, a, k, ext) for r in RUNS for a in ATLASES for k in RUN_KINDS for ext in (".tsv", ".npy")],
        *[relmat(r, a, "pearson", ".npy", desc="dynamic") for r in RUNS for a in ATLASES if DYNAMIC],
        *[group_file(a, STAT[k], "stack", extension=".npy") for a in ATLASES for k in KINDS],
        f"{OUT}/report/fmriflow_report.html",
        f"{OUT}/pretrain/{config['pretrain']['model']}/model.pt",
        *([f"{OUT}/finetune/{config['finetune']['target']}/variants.tsv"] if config["finetune"]["enabled"] else []),
        run_qc_table(),
    ]
