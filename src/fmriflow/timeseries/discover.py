"""Finding the runs of a folder of region time series (``input.mode: timeseries``).

Every file becomes a run key as raw BIDS runs do (``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1``),
so the steps after ingestion name their artefacts the same way in both modes. Discovery is a
glob and a file-name parse: the workflow repeats it whenever it is read (on SLURM, in every job).

- ``xcpd``, ``table``: BIDS-named files ``sub-<label>[_ses-<label>]_task-<label>..._timeseries.<ext>``
  anywhere under the folder; a file naming another atlas (``atlas-``/``seg-``), another
  ``space-`` than ``input.timeseries.space``, or (XCP-D) a ``stat-`` other than ``mean`` is
  not this run's; XCP-D files must name the atlas.
- ``cpac``: ABIDE-Preprocessed names ``<SITE>_<SUBID>_rois_<atlas>.1D`` (subject: the digits of
  SUBID, task: ``input.timeseries.task``), or BIDS-named ``.1D`` files naming the atlas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError
from ..naming import RUN_ENTITIES, run_key
from .readers import TABLE_EXTENSIONS

_LONG = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "ce": "ceagent",
         "rec": "reconstruction", "dir": "direction", "run": "run", "echo": "echo"}
_ABIDE = re.compile(r"^(?:.*_)?(?P<subject>\d+)_rois_(?P<atlas>[A-Za-z0-9]+)\.1D$")


@dataclass(frozen=True)
class TimeseriesInputs:
    """What the workflow plans from: run key -> source file, and the participants table."""

    runs: dict[str, Path]
    participants: Path


def find_inputs(section: Mapping[str, Any], subjects: Sequence[str] = (), tasks: Sequence[str] = ()) -> TimeseriesInputs:
    """The runs and participants table of ``input.timeseries`` (the config section), filtered by
    the top-level ``subjects`` and ``tasks``."""
    root = Path(section["dir"])
    if not root.is_dir():
        raise InputError(root, "input.timeseries.dir is not a folder: set it to the folder holding the region time series")
    participants = Path(section["participants"] or root / "participants.tsv")
    if not participants.is_file():
        raise InputError(participants, "participants table not found: set input.timeseries.participants to a TSV "
                                       "with a participant_id column (sub-<label>), or put participants.tsv in "
                                       "input.timeseries.dir")
    runs: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        entities = run_entities(path.name, section)
        if entities is None or (subjects and entities["subject"] not in subjects) or (tasks and entities["task"] not in tasks):
            continue
        key = run_key(entities)
        if key in runs:
            raise InputError(path, f"run {key} has two files ({runs[key].name} and {path.name}) for atlas "
                                   f"{section['atlas']}: set input.timeseries.space to pick one, or remove one")
        runs[key] = path
    if not runs:
        raise InputError(root, f"no region time series of atlas {section['atlas']} in format {section['format']} found "
                               f"(expected {_EXPECTED[section['format']].format(atlas=section['atlas'])})")
    return TimeseriesInputs(dict(sorted(runs.items())), participants)


_EXPECTED = {
    "xcpd": "sub-<label>[_ses-<label>]_task-<label>[_run-<index>]_space-<space>_atlas-{atlas}_stat-mean_timeseries.tsv",
    "cpac": "<SITE>_<SUBID>_rois_{atlas}.1D, or sub-<label>_..._atlas-{atlas}_..._timeseries.1D",
    "table": "sub-<label>[_ses-<label>]_task-<label>[_run-<index>][_atlas-{atlas}]_timeseries.tsv|.csv|.npy "
             "with a JSON sidecar",
}


def run_entities(name: str, section: Mapping[str, Any]) -> dict[str, str] | None:
    """The run entities (pybids names) of a file that is one of this config's runs; None otherwise."""
    fmt, atlas = section["format"], section["atlas"]
    if fmt == "cpac":
        match = _ABIDE.match(name)
        if match:
            return {"subject": match["subject"], "task": section["task"]} if match["atlas"] == atlas else None
        if not name.endswith(".1D"):
            return None
    elif fmt == "xcpd" and not name.endswith("_timeseries.tsv"):
        return None
    elif fmt == "table" and not any(name.endswith(f"_timeseries{ext}") for ext in TABLE_EXTENSIONS):
        return None
    pairs = bids_pairs(name)
    if pairs is None or "sub" not in pairs:
        return None
    named_atlas = pairs.get("atlas", pairs.get("seg"))
    if named_atlas != atlas and (named_atlas is not None or fmt != "table"):
        return None
    if section.get("space") and pairs.get("space") != section["space"]:
        return None
    if fmt == "xcpd" and pairs.get("stat", "mean") != "mean":
        return None
    entities = {_LONG[k]: v for k, v in pairs.items() if k in _LONG}
    entities.setdefault("task", section["task"])
    return {k: entities[k] for k in RUN_ENTITIES if k in entities}


def bids_pairs(name: str) -> dict[str, str] | None:
    """``key-value`` entities of a BIDS-style file name (before the suffix); None when it is not one."""
    stem = name.split(".")[0]
    parts = stem.split("_")
    pairs = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not re.fullmatch(r"[A-Za-z0-9]+", key) or not re.fullmatch(r"[A-Za-z0-9+]+", value):
            return None
        pairs[key] = value
    return pairs
