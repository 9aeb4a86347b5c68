"""BIDS-Derivatives file names, built from entities in one place.

A *run key* is a raw BOLD file's path relative to the dataset root with the ``_bold``
suffix and extension removed, e.g. ``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1``.
Every derivative of that run is the run key plus derivative entities in BIDS order,
plus a suffix and an extension. Snakemake rules use ``{run}`` as the run-key wildcard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .datasets.participants import bare

# Entities that derivatives add after the raw ones, in the order of the BIDS schema
# (``atlas`` and ``stat`` as XCP-D names them; see DESIGN.md).
DERIVATIVE_ENTITIES = ("space", "res", "den", "atlas", "stat", "desc")

# The run-level entities of a raw BOLD file, in BIDS order.
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction", "direction", "run", "echo")
_KEYS = {
    "subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "ceagent": "ce",
    "reconstruction": "rec", "direction": "dir", "run": "run", "echo": "echo",
}

TEMPLATE_SPACE = "MNI152NLin6Asym"
TEMPLATE_RES = "2"


def run_key(entities: Mapping[str, object]) -> str:
    """The run key of a raw BOLD run from its entities (pybids names)."""
    if "subject" not in entities or "task" not in entities:
        raise ValueError(f"a BOLD run needs subject and task entities, got {dict(entities)}")
    # str(), not a format string: pybids parses run-01 as a PaddedInt whose str() keeps the padding
    parts = [f"{_KEYS[name]}-{str(entities[name])}" for name in RUN_ENTITIES if entities.get(name) is not None]
    folder = [f"sub-{entities['subject']}"]
    if entities.get("session") is not None:
        folder.append(f"ses-{entities['session']}")
    return "/".join([*folder, "func", "_".join(parts)])


def run_key_from_path(bold_path: str | Path) -> str:
    from bids.layout import parse_file_entities  # pybids is slow to import; only this needs it

    return run_key(parse_file_entities(str(bold_path)))


def derivative(run: str, *, suffix: str, extension: str, **entities: object) -> str:
    """``run`` (a run key, or a ``{run}`` wildcard) followed by derivative entities.

    >>> derivative("sub-01/func/sub-01_task-rest", space="MNI152NLin6Asym", res="2",
    ...            atlas="A424", stat="mean", suffix="timeseries", extension=".tsv")
    'sub-01/func/sub-01_task-rest_space-MNI152NLin6Asym_res-2_atlas-A424_stat-mean_timeseries.tsv'
    """
    return f"{run}_{entities_name(suffix=suffix, extension=extension, **entities)}"


def entities_name(*, suffix: str, extension: str, **entities: object) -> str:
    """Derivative entities in BIDS order, suffix and extension: a name for group-level files."""
    unknown = set(entities) - set(DERIVATIVE_ENTITIES)
    if unknown:
        raise ValueError(f"unknown derivative entities {sorted(unknown)}; allowed: {DERIVATIVE_ENTITIES}")
    parts = [f"{name}-{entities[name]}" for name in DERIVATIVE_ENTITIES if entities.get(name) is not None]
    return "_".join([*parts, suffix]) + extension


def template_derivative(run: str, **kwargs: object) -> str:
    """A derivative on the atlas grid (MNI152NLin6Asym, res-2)."""
    return derivative(run, space=TEMPLATE_SPACE, res=TEMPLATE_RES, **kwargs)


def atlas_image(atlas: str) -> str:
    """An atlas's label image on the template grid, relative to the derivatives root."""
    return f"atlases/atlas-{atlas}/atlas-{atlas}_space-{TEMPLATE_SPACE}_res-{TEMPLATE_RES}_dseg.nii.gz"


def atlas_table(atlas: str) -> str:
    """An atlas's look-up table (index, name, x, y, z), relative to the derivatives root."""
    return f"atlases/atlas-{atlas}/atlas-{atlas}_dseg.tsv"


# The fine-tuning features cached per dataset window (finetune_features rule), in the order
# the fine-tuning sidecars list them.
FINETUNE_FEATURES = {
    "samples": "samples.npy",  # the dataset sample of each row
    "fc": "fc.npy",  # Fisher z of the window's Pearson FC
    "ts_pretrained": "ts_pretrained.npy",  # the frozen pretrained encoder's embedding
    "ts_random": "ts_random.npy",  # a random encoder of the same shape (no_pretrain)
}

# BrainSymphony's frozen embeddings per dataset window (fmriflow.finetune.symphony), and who had a connectome
SYMPHONY_FEATURES = {"samples": "samples.npy", "fmri": "fmri.npy", "sc": "sc.npy", "fused": "fused.npy",
                     "gate": "gate.npy"}
SYMPHONY_SUBJECTS = "subjects.tsv"

# a released model's recipe step (fmriflow.bundle.recipe_step) and its frozen embeddings
# (fmriflow.finetune.recipe_probe): named here so that planning need not import those (torch)
RECIPE_PREPARED = ("windows.npy", "index.tsv", "recipe.json")  # windows, their index, the recipe as applied
RECIPE_EMBEDDED = ("embeddings.npy", "windows.tsv")  # one embedding per window, the windows' subjects
FINETUNE_SYMPHONY_SUBJECTS = "symphony_subjects.tsv"  # its copy beside a set-up's predictions, for the report


def symphony_feature_files(modalities: str) -> list[str]:
    """The files BrainSymphony's features step writes for a model of ``modalities`` (both | fmri | sc)."""
    keys = ["samples", *(["fmri"] if modalities != "sc" else []), *(["sc"] if modalities != "fmri" else []),
            *(["fused", "gate"] if modalities == "both" else [])]
    return [SYMPHONY_FEATURES[k] for k in keys]


def subject_of(run: str) -> str:
    return bare(run.split("/", 1)[0])


# Standard templates in MNI coordinates (TemplateFlow names, and fMRIPrep's MNI152Lin / MNI305).
# fmriflow needs the BOLD in one of them: the A424 atlas is defined in MNI space.
MNI_SPACES = (
    "MNI152NLin6Asym", "MNI152NLin6Sym", "MNI152NLin2009aAsym", "MNI152NLin2009aSym", "MNI152NLin2009bAsym",
    "MNI152NLin2009bSym", "MNI152NLin2009cAsym", "MNI152NLin2009cSym", "MNI152Lin", "MNI305", "MNIColin27",
)


def check_mni_space(space: str | None, path: str | Path | None = None) -> str:
    """``space`` if it is an MNI template; otherwise an InputError naming ``path``."""
    from .errors import InputError

    if space not in MNI_SPACES:
        raise InputError(path, f"space {space!r} is not an MNI template space: fmriflow needs BOLD in one of "
                               f"{', '.join(MNI_SPACES)} (fMRIPrep --output-spaces); T1w, fsnative, fsaverage, "
                               "func and other native or surface spaces cannot be put on the atlas grid")
    return space


def space_of(path: str | Path) -> str | None:
    """The ``space-`` entity of a file name (None when it has none)."""
    for part in Path(path).name.split("_"):
        if part.startswith("space-"):
            return part.removeprefix("space-")
    return None
