# Where config meets the rules: validation, run discovery, the paths and the small input
# functions every rule file uses. Rule files define rules only, so their include order in the
# Snakefile does not matter for names.

import copy
import functools
import math
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from snakemake.utils import validate

from fmriflow import console, launch, naming, smk
from fmriflow.checks import check_config, check_participant_columns, in_schema_order, load_schema
from fmriflow.connectivity import GROUP_KINDS, STAT
from fmriflow.errors import InputError
from fmriflow.ingest import RUN_KEY_PATTERN, Sidecars, discover_runs, listing_fingerprint
from fmriflow.models.grids import INPUT_GRIDS, grid_label
from fmriflow.preproc import FMRIPREP_ROOT, LITE_ROOT, preproc_files
from fmriflow.modelling import PRETRAIN_OPTIONS
from fmriflow.project import Paths, model_atlas


SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
check_config(config, SCHEMA, workflow.configfiles)  # every error, by key
validate(config, "../schemas/config.schema.yaml", set_default=True)
# the schema's key order, whichever file set a key (config/config.yaml, config/demo.yaml, --configfile ...)
in_schema_order(config, load_schema(SCHEMA))


# Snakemake's terminal at thousands of runs: group jobs' file lists and reasons shortened,
# no "Shell command: None" for script: and run: jobs (fmriflow.console); the plan sees every file.
console.install()
# one check per script: rule that its script can be read, not one per job (a tenth of a plan at
# thousands of runs; fmriflow.smk.check_scripts_once)
smk.check_scripts_once()
# the cyclic garbage collector every 100,000 allocations, not 700, while the DAG is built: about a
# sixth of a plan's CPU at thousands of runs, the same peak memory (fmriflow.smk.fewer_collections)
smk.fewer_collections()


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
BIDS_DIR = config.setdefault("bids_dir", None)  # input.mode timeseries reads none (the voxel rules still name it)
TIMESERIES = config["input"]["mode"] == "timeseries"  # region time series in, no voxel steps (timeseries.smk)
# the atlas of the foundation models; config atlas.extra adds others (input.mode timeseries: the input's, alone)
ATLAS = model_atlas(config)
EXTRA_ATLASES = {} if TIMESERIES else config["atlas"]["extra"]
PINNED_ATLASES = [] if TIMESERIES else config["atlas"]["pinned"]  # fetched like A424 (fmriflow.atlas_pinned)
if set(PINNED_ATLASES) & set(EXTRA_ATLASES):
    raise InputError(None, f"atlas.extra names {sorted(set(PINNED_ATLASES) & set(EXTRA_ATLASES))}, which atlas.pinned "
                           "names too: rename the extra atlas (one name, one atlas)")
ATLASES = [ATLAS, *EXTRA_ATLASES, *PINNED_ATLASES]
KINDS = config["connectivity"]["kinds"]
RUN_KINDS = [k for k in KINDS if k not in GROUP_KINDS]
DYNAMIC = config["connectivity"]["sliding_window"]["window"] is not None


def timeseries_inputs():
    """Runs and participants table of input.timeseries; a problem stops the plan, naming it."""
    from fmriflow.timeseries import find_inputs

    try:
        return find_inputs(config["input"]["timeseries"], config["subjects"], config["tasks"])
    except InputError as exc:
        raise WorkflowError(str(exc)) from None


TS_INPUT = timeseries_inputs() if TIMESERIES else None
if not TIMESERIES and not Path(BIDS_DIR).is_dir():
    raise WorkflowError(
        f"bids_dir {BIDS_DIR!r} does not exist: set bids_dir in config/config.yaml to your raw BIDS dataset, "
        "or run the demo (`make demo`: the demo dataset and config/demo.yaml)."
    )
PARTICIPANTS = str(TS_INPUT.participants) if TIMESERIES else f"{BIDS_DIR}/participants.tsv"
try:  # each participants.tsv column the config names for a step that runs, before any job
    check_participant_columns(config, PARTICIPANTS)
except InputError as exc:
    raise WorkflowError(str(exc)) from None

# run key (e.g. sub-01/func/sub-01_task-rest) -> raw BOLD path (input.mode timeseries: the run's region time series)
RUNS = {key: str(path) for key, path in (TS_INPUT.runs if TIMESERIES else
                                         discover_runs(BIDS_DIR, config["subjects"], config["tasks"])).items()}


class _PreprocOf(dict):
    """Run key -> the fMRIPrep-shaped BOLD, mask and confounds every later step reads: existing files
    (derivatives mode) or the names the fmriprep / lite rules write (workflow/rules/preproc.smk).
    Found on first use, so that a cluster job looks up its own run's files, not every run's."""

    def __missing__(self, run):
        self[run] = preproc_files(config["preproc"], [run], OUT)[run]
        return self[run]


if not TIMESERIES:
    preproc_files(config["preproc"], [], OUT)  # the preproc section's own errors, before any job
PREPROC = _PreprocOf()


wildcard_constraints:
    run=RUN_KEY_PATTERN,  # any run key: a list of the dataset's runs here makes the plan quadratic in runs
    atlas="|".join(ATLASES),


# --------------------------------------------------------------------------- each run's raw files

SIDECARS = None if TIMESERIES else Sidecars(BIDS_DIR)  # folder listings read once per workflow read


def raw_sidecars(run):
    """The JSON sidecars a run's raw BOLD inherits (BIDS inheritance principle), least specific first."""
    return [str(p) for p in SIDECARS.of(RUNS[run])]


@functools.cache
def _runs_of_subjects():
    runs = {}
    for run in RUNS:
        runs.setdefault(naming.subject_of(run), []).append(run)
    return runs


def subject_raw_files(subject):
    """Every raw BOLD of a subject with its sidecars: what that subject's preprocessing depends on."""
    return list(dict.fromkeys(f for r in _runs_of_subjects()[subject] for f in [RUNS[r], *raw_sidecars(r)]))


def validated():
    """Input of run QC, the first group step: the validator ran (and, with bids.fail_on_errors,
    passed) before any group step. ancient(): an order, not a rerun trigger, so that a README
    edit reruns the bids step and not the group steps. Not an input of the runs' own jobs:
    Snakemake 9.27 then ignores a newer raw input of a job whose ancient input's job reruns."""
    return ancient(raw_validation())


def raw_listing(wildcards):
    """Params function of the bids step: changes when any raw file is added, removed or changed,
    so that the manifest follows the dataset without thousands of named inputs."""
    return listing_fingerprint(BIDS_DIR)


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

    Use as ``params: **shaping(...)``: besides ``config``, one tracking param per entry, so that a
    rerun's reason names the changed entries only (``fmriflow.smk.tracked_params``).

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
    return smk.tracked_params(_sorted(picked))


def shaping_all():
    """The whole resolved config as ``params.config`` (in its own order), tracked as ``shaping`` does."""
    return smk.tracked_params(copy.deepcopy(config))


def on_failure():
    """Params entry of the per-run steps: qc.continue_on_failure (fmriflow.failure). Kept out of
    Snakemake's params record (smk.Shaped): it changes only what a failing job leaves, so
    switching it reruns none of the runs that worked."""
    return smk.Shaped({"continue_on_failure": config["qc"]["continue_on_failure"]})


def _sorted(value):
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


def out(run, **entities):
    """A derivative of ``run`` (a run key or the {run} wildcard) under the fmriflow root."""
    return f"{DERIV}/{naming.derivative(run, **entities)}"


def grid(run, **entities):
    """A derivative on the atlas grid (MNI152NLin6Asym, res-2)."""
    return f"{DERIV}/{naming.template_derivative(run, **entities)}"


def atlas_img(atlas):
    return f"{DERIV}/{naming.atlas_image(atlas)}"


def atlas_labels(atlas):
    return f"{DERIV}/{naming.atlas_table(atlas)}"


def timeseries(run, atlas):
    return grid(run, atlas=atlas, stat=config["parcellate"]["strategy"], suffix="timeseries", extension=".tsv")


def relmat(run, atlas, kind, extension=".tsv", desc=None):
    """A connectivity matrix of one run (or the {run} wildcard) for an atlas and kind."""
    return grid(run, atlas=atlas, stat=STAT[kind], desc=desc, suffix="relmat", extension=extension)


def group_file(atlas, stat, desc, suffix="relmat", extension=".tsv"):
    """A group-level file for an atlas and a stat label (e.g. STAT["pearson"], or "{stat}")."""
    return f"{DERIV}/group/" + naming.entities_name(
        space=naming.TEMPLATE_SPACE, res=naming.TEMPLATE_RES, atlas=atlas, stat=stat,
        desc=desc, suffix=suffix, extension=extension,
    )


def fmriprep_files(*kinds):
    """Input function for ``unpack()``: the run's fMRIPrep outputs ``kinds``, named so. One call per
    job, not one per file: Snakemake's cost per input function adds up over thousands of runs."""
    return lambda wildcards: {kind: str(getattr(PREPROC[wildcards.run], kind)) for kind in kinds}


def preproc_check_inputs(wildcards):
    """Inputs of preproc_derivatives: the run's fMRIPrep files, its raw BOLD and that BOLD's own
    sidecars (not the dataset-wide manifest), from one input function."""
    return {**fmriprep_files("bold", "mask", "confounds")(wildcards), "raw_bold": RUNS[wildcards.run],
            "sidecars": raw_sidecars(wildcards.run)}


def all_outputs():
    return [
        f"{DERIV}/dataset_description.json",
        # every run's matrices, through the list of them (its inputs): one file here, not two per run and kind
        *[run_list(f"atlas-{a}_desc-relmat") for a in ATLASES if RUN_KINDS],
        *[relmat(r, a, "pearson", ".npy", desc="dynamic") for r in RUNS for a in ATLASES if DYNAMIC],
        *[group_file(a, STAT[k], "stack", extension=".npy") for a in ATLASES for k in KINDS],
        f"{OUT}/report/fmriflow_report.html",
        *([f"{PRETRAIN_DIR}/model.pt", *bundle_files(BUNDLE_DIR)] if PRETRAIN["enabled"] else []),
        *([f"{FINETUNE_DIR}/variants.tsv"] if FINETUNE["enabled"] else []),
        *([f"{SYMPHONY_DIR}/model.pt", f"{SYMPHONY_DIR}/probe/regions.tsv"] if SYMPHONY["enabled"] else []),
        run_qc_table(),
    ]


# --------------------------------------------------------------------------- preprocessing

MODE = config["preproc"]["mode"]

if MODE == "fmriprep":
    from fmriflow.preproc.fmriprep import default_image, fmriprep_command, pinned_image, subject_outputs

    FMRIPREP = config["preproc"]["fmriprep"]
    FMRIPREP_DIR = f"{OUT}/{FMRIPREP_ROOT}"
    FMRIPREP_WORK = FMRIPREP["work_dir"] or f"{OUT}/work/fmriprep"
    FMRIPREP_IMAGE = FMRIPREP["image"] or default_image(
        FMRIPREP["runtime"], pinned_image(f"{workflow.basedir}/containers/fmriprep.yaml")
    )


def fmriprep_shell_command(subject):
    """Params function: the job's command, built from the threads and memory it was given."""

    def command(wildcards, threads, resources):
        return shlex.join(fmriprep_command(
            FMRIPREP, subject, threads=threads, mem_mb=resources.mem_mb, bids_dir=BIDS_DIR,
            output_dir=FMRIPREP_DIR, work_dir=f"{FMRIPREP_WORK}/sub-{subject}", image=FMRIPREP_IMAGE,
        ))

    return command


if MODE == "lite":
    from fmriflow.preproc.lite import boldref_path, expected_files as lite_files

    LITE_FILES = lite_files(f"{OUT}/{LITE_ROOT}", "{run}")


# --------------------------------------------------------------------------- run QC

def run_qc_table():
    return f"{DERIV}/group/desc-runs_qc.tsv"


# --------------------------------------------------------------------------- run file lists
# A group step reads a list of every run's files (fmriflow.runfiles) beside the run QC table,
# which says which runs to pool: no checkpoint, whose second pass over the DAG costs every plan.

def _run_lists():
    """List name -> role -> the per-run file pattern (with {run}); one list job each, made on demand."""
    lists = {"desc-preproc": {"bold": grid("{run}", desc="preproc", suffix="bold", extension=".nii.gz"),
                              "mask": grid("{run}", desc="brain", suffix="mask", extension=".nii.gz")}}
    for a in ATLASES:
        lists[f"atlas-{a}_desc-timeseries"] = {"timeseries": timeseries("{run}", a)}
        lists[f"atlas-{a}_desc-relmat"] = {f"{k}_{ext[1:]}": relmat("{run}", a, k, ext)
                                           for k in RUN_KINDS for ext in (".tsv", ".npy")}
    return lists


RUN_LISTS = _run_lists()


def run_list(name):
    """The list file ``name`` (a key of RUN_LISTS; may hold the {atlas} wildcard)."""
    return f"{DERIV}/group/space-{naming.TEMPLATE_SPACE}_res-{naming.TEMPLATE_RES}_{name}_files.tsv"


def run_list_input(wildcards):
    """Input function of the list rule: role -> every run's file, in run order."""
    return {role: expand(pattern, run=RUNS) for role, pattern in RUN_LISTS[wildcards.listing].items()}


def pooled(name):
    """Inputs of a group step: the list ``name`` and the run QC table."""
    return {"files": run_list(name), "run_qc": run_qc_table()}


# --------------------------------------------------------------------------- dataset and pretraining

PRETRAIN = config["pretrain"]
# the modelling artefacts' folders, shared with the CLI's modelling commands (fmriflow.project)
PATHS = Paths.of(config)
DATASET_DIR = PATHS.dataset
PRETRAIN_DIR = PATHS.pretrain


def cli_options(options):
    """``--key value`` for each item (``--key`` / ``--no-key`` for booleans), shell-quoted."""
    words = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


# --------------------------------------------------------------------------- BrainSymphony (opt-in)

SYMPHONY = config["brainsymphony"]
SYMPHONY_DIR = f"{OUT}/brainsymphony/{SYMPHONY['model']}_modalities-{SYMPHONY['modalities']}"
# the connectomes as the model takes them: one folder per transform (the run's --sc-dir), so that a
# changed brainsymphony.sc.transform leaves no second connectome of a subject where training looks
SC_OUT = f"{OUT}/sc/atlas-{ATLAS}/transform-{SYMPHONY['sc']['transform'].replace('_', '')}"


@functools.cache
def sc_sources():
    """Subject -> its QSIRecon / MRtrix connectome below brainsymphony.sc.dir; {} when no connectome is used.
    Subjects without one take the fMRI-only path (left out of SC pretraining; the report says who)."""
    if not SYMPHONY["enabled"] or SYMPHONY["modalities"] == "fmri":
        return {}
    if SYMPHONY["sc"]["source"] == "qsiprep":  # made by QSIPrep + QSIRecon (workflow/rules/qsiprep.smk)
        return {subject: qsirecon_connectome(subject) for subject in qsi_subjects()}
    from fmriflow.sc.connectome import find_connectomes

    if not SYMPHONY["sc"]["dir"]:
        raise WorkflowError(f"brainsymphony.modalities {SYMPHONY['modalities']} needs brainsymphony.sc.dir "
                            "(a folder of QSIRecon / MRtrix connectomes); none was given")
    if SYMPHONY["sc"]["transform"] == "log10_count_over_volume" and not SYMPHONY["sc"]["volumes"]:
        raise WorkflowError("brainsymphony.sc.transform log10_count_over_volume needs brainsymphony.sc.volumes "
                            "(a TSV with volume_mm3 per region); or choose log1p | none")
    subjects = sorted({naming.subject_of(run) for run in RUNS})
    try:
        found, missing = find_connectomes(SYMPHONY["sc"]["dir"], subjects, SYMPHONY["sc"]["pattern"])
    except InputError as exc:
        raise WorkflowError(f"brainsymphony.sc.dir: {exc}") from None
    if not found:
        raise WorkflowError(f"brainsymphony.sc.dir {SYMPHONY['sc']['dir']}: no connectome for any subject ({missing}); "
                            "use brainsymphony.modalities: fmri for a cohort without structural data")
    return {subject: str(path) for subject, path in found.items()}


def symphony_feature_files():
    """What brainsymphony_features writes for brainsymphony.modalities: the arrays, subjects.tsv last."""
    names = [*naming.symphony_feature_files(SYMPHONY["modalities"]), naming.SYMPHONY_SUBJECTS]
    return [f"{SYMPHONY_DIR}/features/{name}" for name in names]


def symphony_readout_networks():
    """The networks TSV of brainsymphony.readout networks (the probe's network read-out), else None."""
    if SYMPHONY["readout"] != "networks":
        return None
    if not SYMPHONY["networks"]:
        raise WorkflowError("brainsymphony.readout networks needs brainsymphony.networks (a TSV with name and "
                            "network per region); none was given (or choose readout: pooled)")
    return SYMPHONY["networks"]


def symphony_features():
    """BrainSymphony's embeddings for the fine-tuning's probe rows (brainsymphony.enabled), else none."""
    return symphony_feature_files() if SYMPHONY["enabled"] else []


def sc_matrix(subject):
    """The connectome of a subject (or the {subject} wildcard) as the model takes it."""
    from fmriflow.sc.connectome import TRANSFORM_DESC

    return f"{SC_OUT}/sub-{subject}_atlas-{ATLAS}_desc-{TRANSFORM_DESC[SYMPHONY['sc']['transform']]}_connectome.tsv"


def sc_outputs():
    return [sc_matrix(s) for s in sc_sources()]


# --------------------------------------------------------------------------- QSIPrep + QSIRecon (opt-in)

# brainsymphony.sc.source qsiprep: each subject's raw DWI -> QSIPrep -> QSIRecon (the model's atlas)
# -> a connectivity .mat at a fixed name -> sc_connectome.
QSI = config["qsiprep"]
QSIPREP_DIR = f"{OUT}/qsiprep"  # QSIPrep's derivatives root
QSIRECON_DIR = f"{OUT}/qsirecon"  # QSIRecon's output root
QSI_WORK = QSI["work_dir"] or f"{OUT}/work"
SC_QSI = f"{OUT}/sc/qsirecon"  # what the jobs hand on: QSIPrep records, the collected connectomes
QSI_ATLASES = f"{OUT}/sc/qsirecon-atlases"  # the atlas dataset QSIRecon is given (--datasets)


def qsi_active():
    return SYMPHONY["enabled"] and SYMPHONY["modalities"] != "fmri" and SYMPHONY["sc"]["source"] == "qsiprep"


@functools.cache
def qsi_subjects():
    """The cohort's subjects, each checked to have raw DWI; the settings checked before any job."""
    from fmriflow.sc.qsiprep import check_measure, fs_license, subject_dwi

    if TIMESERIES or not BIDS_DIR:
        raise WorkflowError("brainsymphony.sc.source qsiprep runs QSIPrep on raw DWI: it needs bids_dir and "
                            "input.mode bids; use sc.source files with connectomes that exist")
    if SYMPHONY["sc"]["atlas"] != ATLAS:
        raise WorkflowError(f"brainsymphony.sc.atlas is {SYMPHONY['sc']['atlas']!r} but QSIRecon is given the "
                            f"model's atlas {ATLAS!r} (the .mat's keys name it): set brainsymphony.sc.atlas: {ATLAS}")
    if SYMPHONY["sc"]["transform"] == "log10_count_over_volume" and not SYMPHONY["sc"]["volumes"]:
        raise WorkflowError("brainsymphony.sc.transform log10_count_over_volume needs brainsymphony.sc.volumes "
                            "(a TSV with volume_mm3 per region); or choose log1p | none")
    subjects = sorted({naming.subject_of(run) for run in RUNS})
    try:
        check_measure(QSI["recon_spec"], SYMPHONY["sc"]["measure"])
        fs_license(QSI)  # both tools refuse to start without it: say so before any job
        qsi_images()
        for subject in subjects:
            subject_dwi(BIDS_DIR, subject)
    except InputError as exc:
        raise WorkflowError(str(exc)) from None
    return subjects


@functools.cache
def qsi_images():
    """Tool -> image: the configured one, else the pin in containers/qsiprep.yaml."""
    from fmriflow.sc.qsiprep import TOOLS, image_for, pinned_images

    pinned = pinned_images(f"{workflow.basedir}/containers/qsiprep.yaml")
    return {tool: image_for(QSI, tool, pinned) for tool in TOOLS}


def qsiprep_record(subject):
    """QSIPrep's outputs of a subject (or the {subject} wildcard), listed with checksums after it ran."""
    return f"{SC_QSI}/sub-{subject}_desc-qsiprep_files.tsv"


def qsirecon_connectome(subject):
    """A subject's QSIRecon connectivity .mat at a fixed name: what sc_connectome reads."""
    return f"{SC_QSI}/sub-{subject}_atlas-{ATLAS}_connectivity.mat"


def qsi_raw_files(wildcards):
    """What a subject's QSIPrep run reads: its raw dwi/, anat/ and fmap/ files (not the BOLD runs)."""
    root = Path(BIDS_DIR) / f"sub-{wildcards.subject}"
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.parent.name in ("dwi", "anat", "fmap"))


def qsi_shell_command(tool):
    """Params function: a subject's QSIPrep or QSIRecon command from the job's threads and memory."""
    from fmriflow.sc.qsiprep import qsiprep_command, qsirecon_command

    def command(wildcards, threads, resources):
        s = wildcards.subject
        common = dict(threads=threads, mem_mb=resources.mem_mb, work_dir=f"{QSI_WORK}/{tool}/sub-{s}",
                      image=qsi_images()[tool])
        if tool == "qsiprep":
            return shlex.join(qsiprep_command(QSI, s, bids_dir=BIDS_DIR, output_dir=QSIPREP_DIR, **common))
        return shlex.join(qsirecon_command(QSI, s, qsiprep_dir=QSIPREP_DIR, output_dir=QSIRECON_DIR,
                                           atlas_dataset=QSI_ATLASES, atlas=ATLAS, **common))

    return command


# --------------------------------------------------------------------------- fine-tuning

FINETUNE = config["finetune"]
FINETUNE_DIR = PATHS.finetune


# --------------------------------------------------------------------------- encoder bundles

# where this project's pretrained encoder travels from (workflow/rules/bundle.smk): weights, config, card
BUNDLE_DIR = PATHS.bundle
# finetune.encoder: a bundle from another project, fine-tuned instead of this run's pretraining
ENCODER = FINETUNE["encoder"]


def bundle_files(folder):
    from fmriflow.bundle import FILES

    return [f"{folder}/{name}" for name in FILES]


# pretrain.init: a bundle this project's pretraining continues from (domain adaptation)
INIT = PRETRAIN["init"]


def _read_bundle(key, path):
    """The bundle's path without a trailing slash; before any job, a card that cannot be read stops the plan."""
    from fmriflow.bundle import read_card

    try:
        read_card(path)
    except InputError as exc:
        raise WorkflowError(f"{key}: {exc}") from None
    return str(Path(path))


ENCODER = _read_bundle("finetune.encoder", ENCODER) if ENCODER else None
INIT = _read_bundle("pretrain.init", INIT) if INIT else None
# the bundle whose card prepares this project's dataset (window, TR, scaling): fine-tuned or continued
CARD_BUNDLE = ENCODER or INIT


def encoder_model():
    """The encoder fine-tuning starts from: the bundle's weights, or this run's pretrained model."""
    return bundle_files(ENCODER)[0] if ENCODER else f"{PRETRAIN_DIR}/model.pt"


def encoder_extras():
    """The bundle's config and card besides its weights (none without finetune.encoder): inputs, so a
    changed bundle reruns fine-tuning."""
    return bundle_files(ENCODER)[1:] if ENCODER else []


def dataset_encoder_inputs():
    """The dataset step's inputs from the bundle (finetune.encoder or pretrain.init): its card, and this
    project's atlas to check against it."""
    if not CARD_BUNDLE:
        return {}
    return {"encoder_card": bundle_files(CARD_BUNDLE)[2], **atlas_image_input(), "atlas_labels": atlas_labels(ATLAS)}


# --------------------------------------------------------------------------- released models' recipes (opt-in)
# recipes: name -> an imported bundle (fmriflow import-checkpoint). Each gets a recipe step that prepares
# this project's data as its card says (workflow/rules/recipes.smk); its probe rows, their random-encoder
# controls and its FMMTC variants (finetune.recipe_variants) join the variants table.

RECIPES_DIR = f"{OUT}/recipes"


def _plan_recipes():
    """name -> bundle folder, input kind ('regions' | 'voxels') and the project atlas the card's atlas is;
    every card is read and its atlas found before any job."""
    from fmriflow.bundle import read_card
    from fmriflow.bundle.recipe_plan import project_atlas, recipe_kind

    if config["recipes"] and not FINETUNE["enabled"]:
        raise WorkflowError("recipes: a released model's probe rows join the fine-tuning's variants table; "
                            "set finetune.enabled: true, or recipes: {}")
    plans = {}
    for name, path in config["recipes"].items():
        key = f"recipes.{name}"
        folder = _read_bundle(key, path)
        card = read_card(folder)
        kind = recipe_kind(card)
        if kind == "voxels" and TIMESERIES:
            raise WorkflowError(f"{key}: {folder} takes voxels (MNI-resampled BOLD), which input.mode timeseries lacks")
        try:
            atlas = project_atlas(card, bundle_files(folder)[2], key, ATLASES) if kind == "regions" else None
        except InputError as exc:
            raise WorkflowError(str(exc)) from None
        plans[name] = {"bundle": folder, "kind": kind, "atlas": atlas}
    return plans


RECIPE_PLANS = _plan_recipes()


def recipe_prepared(name="{recipe}"):
    """The recipe step's three files (windows, index, recipe.json) of recipe ``name``."""
    return [f"{RECIPES_DIR}/{name}/prepared/{f}" for f in naming.RECIPE_PREPARED]


RECIPE_ENCODERS = {"pretrained": "embeddings", "random": "embeddings-random"}  # encoder -> its embeddings' folder


def recipe_embedded(name="{recipe}", encoder="pretrained"):
    """The recipe's frozen embeddings (the bundle's encoder, or its random-initialised control) and their windows."""
    return [f"{RECIPES_DIR}/{name}/{RECIPE_ENCODERS[encoder]}/{f}" for f in naming.RECIPE_EMBEDDED]


def recipe_prepare_mem(wildcards, input, attempt):
    """Resource function of recipe_prepare: sized from the runs its run list names when it is scheduled
    (fmriflow.bundle.recipe_plan.prepare_mem_mb; the voxel recipe holds a whole run), doubled on a retry."""
    from fmriflow.bundle import read_card
    from fmriflow.bundle.recipe_plan import prepare_mem_mb

    plan = RECIPE_PLANS[wildcards.recipe]
    return attempt * prepare_mem_mb(plan["kind"], input.files, read_card(plan["bundle"]))


def recipe_prepare_input(wildcards):
    """The card, this project's runs (the card atlas's time series, or the BOLD and masks) and the splits."""
    plan = RECIPE_PLANS[wildcards.recipe]
    runs = pooled(f"atlas-{plan['atlas']}_desc-timeseries") if plan["kind"] == "regions" else pooled("desc-preproc")
    labels = {"labels": atlas_labels(plan["atlas"])} if plan["kind"] == "regions" else {}
    # the voxel recipe reads the preprocessed BOLD; the denoised BOLD's sidecar (OutputVolumes) puts its windows
    # on the clock of the dataset's windows, which count from the denoised series' first volume
    denoised = {"denoised": expand(grid("{run}", desc="denoised", suffix="bold", extension=".nii.gz"), run=list(RUNS))
                } if plan["kind"] == "voxels" else {}
    return {"card": bundle_files(plan["bundle"])[2], **runs, **labels, **denoised,
            "dataset": f"{DATASET_DIR}/dataset_card.json"}


def recipe_embeddings():
    """Every recipe's embeddings, pretrained and random (the fine-tuning's rows), none without recipes."""
    return [path for name in RECIPE_PLANS for encoder in RECIPE_ENCODERS for path in recipe_embedded(name, encoder)]


def recipe_dirs():
    """name -> encoder -> the folder of its embeddings (fmriflow.finetune.run.setup_step's recipe_dirs)."""
    return {name: {encoder: f"{RECIPES_DIR}/{name}/{folder}" for encoder, folder in RECIPE_ENCODERS.items()}
            for name in RECIPE_PLANS}


def init_inputs():
    """The pretrain rule's inputs from pretrain.init: the bundle's three files (a changed bundle reruns it)."""
    return {"init": bundle_files(INIT)} if INIT else {}


def pretrain_init_options():
    """fmriflow.train's options of continued pretraining: the bundle, and the atlas its card must have."""
    return {"init_from": INIT, "atlas": ATLAS} if INIT else {}


def atlas_image_input():
    """The model atlas's image as an input, where there is one (input.mode timeseries may have only a table)."""
    return {} if TIMESERIES else {"atlas_image": atlas_img(ATLAS)}


def raw_manifest():
    """Every raw input with its sha256: the BIDS manifest, or the region time series' in input.mode timeseries."""
    return f"{OUT}/{'timeseries' if TIMESERIES else 'bids'}/manifest.tsv"


def raw_validation():
    """The raw inputs' checks: the BIDS validator's, or the region time series readers' in input.mode timeseries."""
    return f"{OUT}/{'timeseries' if TIMESERIES else 'bids'}/validation.json"


def dataset_shaping():
    """What shapes the dataset: its section; with a bundle's card (finetune.encoder, pretrain.init) also
    the scaling choice, and the preprocessing that the step compares with the card's."""
    if not CARD_BUNDLE:
        return shaping("dataset")
    return {**shaping("dataset", "finetune.scaling", "preproc.mode", "denoise", "parcellate"), "atlas": ATLAS}


@functools.cache
def finetune_setups():
    """Set-ups the participants table supports: read when the plan needs them (the finetune_table and
    report jobs' inputs), so a table that cannot label fine-tuning stops the plan, naming the problem."""
    from fmriflow.finetune.cohort import load_cohort, setup_names

    try:
        cohort = load_cohort(PARTICIPANTS, FINETUNE["target"], FINETUNE["task"], FINETUNE["missing_labels"],
                             subjects=sorted({naming.subject_of(r) for r in RUNS}))
    except InputError as exc:
        raise WorkflowError(f"fine-tuning (finetune.enabled: true, finetune.target: {FINETUNE['target']!r}) cannot "
                            f"label its subjects: {exc}") from None
    names = setup_names(cohort, FINETUNE["drug_column"], FINETUNE["site_column"])
    return [n for n in names if n.split("-")[0] in FINETUNE["setups"]]


def finetune_outputs(template):
    """Input function: ``template`` (with ``{setup}``) for every set-up; none when fine-tuning is off."""
    return lambda wildcards: expand(template, setup=finetune_setups()) if FINETUNE["enabled"] else []


def finetune_resources():
    resources = {"mem_mb": FINETUNE["mem_mb"], "runtime": FINETUNE["runtime"]}
    if FINETUNE["gpus"]:
        resources.update(gpu=FINETUNE["gpus"], cpus_per_gpu=PRETRAIN["cpus_per_gpu"])
        if PRETRAIN["gpu_model"]:
            resources["gpu_model"] = PRETRAIN["gpu_model"]
    return resources


# --------------------------------------------------------------------------- voxel models

VOXEL = config["voxel"]
VOXEL_GRID = {model: grid_label(shape) for model, shape in INPUT_GRIDS.items()}  # each model's input grid (X x Y x Z)
VOXEL_TARGET = VOXEL["target"]


def voxel_dataset_dir(geometry):
    return f"{OUT}/dataset/voxel-{geometry}"


def voxel_finetune_dir(model):
    return f"{OUT}/voxel/{model}_target-{VOXEL_TARGET}"


def voxel_train_options(task, section, **extra):
    """Command-line options of fmriflow.train for one voxel model."""
    keys = ("model", "window", "stride", "batch_size", "max_steps", "lr")
    shared = ("warmup_steps", "checkpoint_every", "precision", "seed", "num_workers", "grad_checkpoint")
    return cli_options({"task": task, **{k: section[k] for k in keys}, **{k: VOXEL[k] for k in shared}, **extra})


def voxel_finetune_input(wildcards):
    inputs = {"card": f"{voxel_dataset_dir(VOXEL_GRID[wildcards.model])}/dataset_card.json",
              "participants": f"{BIDS_DIR}/participants.tsv"}
    if wildcards.model == "neurostorm":
        inputs["pretrained"] = rules.voxel_pretrain.output.model
    return inputs


def voxel_outputs():
    return [f"{voxel_finetune_dir(m)}/model.pt" for m in VOXEL["models"]] if VOXEL["enabled"] else []


# --------------------------------------------------------------------------- report

def ground_truth():
    path = config["report"]["ground_truth"]
    return [path] if path and Path(path).is_file() else []


def voxel_metrics():
    """metrics.csv of every voxel-level training run (voxel.enabled), keyed by a display name."""
    if not VOXEL["enabled"]:
        return {}
    runs = {f"{m} fine-tuning": f"{voxel_finetune_dir(m)}/metrics.csv" for m in VOXEL["models"]}
    if "neurostorm" in VOXEL["models"]:
        runs["neurostorm pretraining"] = rules.voxel_pretrain.output.metrics
    return runs


# --------------------------------------------------------------------------- input.mode: timeseries
# Ready-made region time series replace the voxel steps (workflow/rules/timeseries.smk): the runs
# are the input files, and the run QC and the report read the ingestion's files where the voxel
# steps' would be.


def timeseries_sources(run):
    """A run's input file, then its JSON sidecar and XCP-D's motion table where they exist."""
    from fmriflow.timeseries.steps import source_files

    return source_files(RUNS[run])


def input_qc(run):
    """The QC row of a run's ingested time series."""
    return out(run, desc="input", suffix="qc", extension=".tsv")


def coverage_table(run):
    return grid(run, atlas=ATLAS, stat="coverage", suffix="bold", extension=".tsv")


def run_qc_rows():
    """Each run's QC row for run QC: the denoise step's, or the ingestion's."""
    return [input_qc(r) for r in RUNS] if TIMESERIES else expand(rules.denoise.output.qc, run=RUNS)


def report_data_inputs(wildcards):
    """The report's data-side inputs: the bids and voxel steps' files, or the ingestion's (no BOLD)."""
    if TIMESERIES:
        return {"manifest": raw_manifest(), "validation": raw_validation(), "qc": [input_qc(r) for r in RUNS], "coverage": [coverage_table(r) for r in RUNS],
                "confounds": [], "bold": [], "mask": [], "denoised": []}
    return {"manifest": raw_manifest(), "validation": raw_validation(),
            "qc": expand(rules.preproc_derivatives.output.qc, run=RUNS), "coverage": [coverage_table(r) for r in RUNS],
            # per run, in RUNS order: FD traces of every run; tSNR maps and carpet plots of a few (report/runqc.py)
            "confounds": [str(PREPROC[r].confounds) for r in RUNS], "bold": expand(rules.resample.output.bold, run=RUNS),
            "mask": expand(rules.resample.output.mask, run=RUNS), "denoised": expand(rules.denoise.output.bold, run=RUNS),
            "atlas_image": atlas_img(ATLAS)}
