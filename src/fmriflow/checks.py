"""Input checks: one place for what fmriflow refuses, each failure an InputError naming file and problem.

Where they run (docs/reliability.md lists every case and its message):

- the config, before Snakemake fills in the schema's defaults (``check_config``, from
  ``workflow/rules/common.smk``): every rejected key at once, as a dotted path, then the
  relations between keys (fine-tuning needs pretraining);
- the participants.tsv columns the config names (``check_participant_columns``), when the
  workflow is read: each key whose step runs and whose column the table's header lacks;
- per raw BOLD file, in its run's first job (``raw_bold_problem``, from the header and the
  sidecars the run inherits): the run fails naming the file, and with ``--keep-going`` the
  other subjects go on; the ``bids`` step records the same problem in the manifest;
- per run, in that first job, before any of its artefacts is written: after the header and
  sidecar, the image data of the raw and the preprocessed BOLD (``check_bold_data``:
  complete, finite, not empty), streamed a few volumes at a time;
- per reader of ``participants.tsv`` (``fmriflow.datasets.participants``);
- per extra atlas, after it is put on the template grid (``check_atlas_on_grid``).

The official BIDS validator runs in the ``bids`` step, beside the runs' own jobs (each run
depends on its own raw files only) and before any group step, and, with
``bids.fail_on_errors`` (the default), stops the run on the raw-data errors it
knows (missing RepetitionTime, TR mismatch, 3D BOLD, repeated participants); the checks
here catch the same problems per run when it is off, and the ones it does not look for
(truncated or non-finite data, empty runs, fMRIPrep outputs).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import InputError
from .io import open_nifti


# --------------------------------------------------------------------------- config


@functools.cache
def load_schema(schema_path: str | Path) -> dict[str, Any]:
    """The config schema, read once per process (every workflow read, every cluster job's too):
    with libyaml's parser where PyYAML has it, ten times faster than the pure-Python one."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(schema_path).read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 (a safe loader)


def check_config(config: Mapping[str, Any], schema_path: str | Path, sources: Iterable[str | Path] = ()) -> None:
    """Validate ``config`` against the JSON schema; list every violation, not just the first.

    Snakemake's own ``validate`` (which also fills in the defaults) stops at the first
    error and prints the whole schema; this names each offending key as a dotted path.
    """
    from jsonschema import Draft202012Validator

    schema = load_schema(schema_path)
    errors = sorted(Draft202012Validator(schema).iter_errors(dict(config)), key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"  {_dotted(e.absolute_path)}: {_config_problem(e)}" for e in errors]
    if not errors:  # relations between keys, which the schema cannot express
        lines = [f"  {problem}" for problem in _cross_key_problems(with_defaults(config, schema))]
    if not lines:
        return
    where = ", ".join(map(str, sources)) or "config"
    raise InputError(where, f"{len(lines)} config value(s) rejected by {Path(schema_path).name}:\n" + "\n".join(lines))


def with_defaults(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in, as Snakemake's ``validate``
    (``set_default=True``) fills them: a missing key takes its default, sections recursively."""
    filled = dict(config)
    for key, spec in schema.get("properties", {}).items():
        if key not in filled and "default" in spec:
            filled[key] = copy.deepcopy(spec["default"])
        if isinstance(filled.get(key), dict) and "properties" in spec:
            filled[key] = with_defaults(filled[key], spec)
    return filled


def in_schema_order(config: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Put the keys of ``config`` (and of its sections) in the schema's order, in place.

    Snakemake puts the keys of a ``--configfile`` before those of ``config/config.yaml``, so the
    same settings would print (report, provenance) in an order that depends on how they were
    split over files; in the schema's order they do not. Keys the schema does not list (the
    names under ``atlas.extra``) keep theirs.
    """
    properties = schema.get("properties", {})
    ordered = {key: config[key] for key in properties if key in config}
    ordered.update((key, value) for key, value in config.items() if key not in ordered)
    config.clear()
    config.update(ordered)
    for key, value in config.items():
        if isinstance(value, dict) and "properties" in properties.get(key, {}):
            in_schema_order(value, properties[key])


def _cross_key_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems of keys that only another key's value makes wrong (``config`` with its defaults)."""
    finetune, problems = config["finetune"], []
    if finetune["min_epochs"] > finetune["max_epochs"]:
        problems.append(f"finetune.min_epochs: {finetune['min_epochs']} is more than finetune.max_epochs "
                        f"({finetune['max_epochs']})")
    encoder, pretrain = finetune["encoder"], config["pretrain"]["enabled"]
    if finetune["enabled"] and not pretrain and encoder is None:
        problems.append("finetune.enabled: true needs pretrain.enabled: true (fine-tuning starts from the pretrained "
                        "encoder and its dataset); set finetune.enabled: false, or pretrain.enabled: true, or "
                        "finetune.encoder to an encoder bundle pretrained elsewhere")
    if encoder is not None and pretrain:
        problems.append(f"finetune.encoder: {encoder!r} fine-tunes an encoder pretrained elsewhere, so this project "
                        "pretrains none: set pretrain.enabled: false, or finetune.encoder: null to fine-tune this "
                        "run's pretraining")
    if encoder is not None and not finetune["enabled"]:
        problems.append(f"finetune.encoder: {encoder!r} is read by fine-tuning only, and finetune.enabled is false: "
                        "set finetune.enabled: true, or finetune.encoder: null")
    if config["pretrain"]["init"] is not None and not pretrain:
        problems.append(f"pretrain.init: {config['pretrain']['init']!r} continues pretraining from a bundle, and "
                        "pretrain.enabled is false: set pretrain.enabled: true, or pretrain.init: null (to fine-tune "
                        "the bundle without pretraining: finetune.encoder)")
    from .timeseries.settings import config_problems as timeseries_problems  # input.mode: timeseries

    return problems + timeseries_problems(config)


def _dotted(path: Iterable[Any]) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _config_problem(error: Any) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message} (allowed: {', '.join(allowed)})"
    return error.message


# --------------------------------------------------------------------------- participants.tsv columns

# Each config key that names a participants.tsv column: the key and value that do without one.
_INSTEAD = {
    "report.group_column": ("report.group_column", "null (no group comparison)"),
    "dataset.stratify": ("dataset.stratify", "null (splits not stratified)"),
    "finetune.target": ("finetune.enabled", "false"),
    "finetune.drug_column": ("finetune.drug_column", "null (no drug-<value> set-ups)"),
    "finetune.site_column": ("finetune.site_column", "null (no site-<value> set-ups)"),
    "voxel.target": ("voxel.enabled", "false"),
}
_REQUIRED_BY = {"finetune.target": "finetune.enabled", "voxel.target": "voxel.enabled"}


def participant_columns_in_use(config: Mapping[str, Any]) -> dict[str, str | None]:
    """Config key -> the participants.tsv column it names, for the keys whose step runs (``config``
    with its defaults). A null column is left out, unless the step needs one (the targets)."""
    finetune, voxel = config["finetune"], config["voxel"]
    used = {"report.group_column": config["report"]["group_column"]}  # the group FC always runs
    # the region dataset (for pretraining, for an encoder from elsewhere; the voxel data reuse its splits)
    if config["pretrain"]["enabled"] or finetune["encoder"] is not None or voxel["enabled"]:
        used["dataset.stratify"] = config["dataset"]["stratify"]
    if finetune["enabled"]:
        used["finetune.target"] = finetune["target"]
        for kind in ("drug", "site"):
            if kind in finetune["setups"]:
                used[f"finetune.{kind}_column"] = finetune[f"{kind}_column"]
    if voxel["enabled"]:
        used["voxel.target"] = voxel["target"]
    return {key: column for key, column in used.items() if column is not None or key in _REQUIRED_BY}


def check_participant_columns(config: Mapping[str, Any], participants: str | Path) -> None:
    """Refuse, naming each key, config values that name a column ``participants`` lacks.

    Reads the header only (``participant_columns``): the rows are checked by the steps that
    read them. A missing or unreadable table is an error only when some key needs it.
    """
    from .datasets.participants import participant_columns

    used = participant_columns_in_use(config)
    if not used:
        return
    if not Path(participants).is_file():
        instead = "; ".join(f"{_INSTEAD[key][0]}: {_INSTEAD[key][1]}" for key in used)
        raise InputError(participants, f"participants table not found, but the config names its columns "
                                       f"({', '.join(used)}): add the table, or set {instead}")
    columns = participant_columns(participants)
    choices = [c for c in columns if c != "participant_id"]
    problems = []
    for key, column in used.items():
        if column is None:
            problems.append(f"{key}: null, but {_REQUIRED_BY[key]} is true and needs a column; {_instead(key, choices)}")
        elif column not in columns:
            problems.append(f"{key}: column {column!r} is not in the table (its columns: {columns}); "
                            f"{_instead(key, choices)}")
    if problems:
        raise InputError(participants, f"{len(problems)} config value(s) name a participants column it does not "
                                       "have:\n" + "\n".join(f"  {p}" for p in problems))


def _instead(key: str, choices: list[str]) -> str:
    other, value = _INSTEAD[key]
    alternative = value if other == key else f"{other}: {value}"
    return f"set {key} to one of {choices}, or {alternative}" if choices else f"set {other}: {value}"


# --------------------------------------------------------------------------- raw BOLD


def raw_bold_problem(path: str | Path, metadata: Mapping[str, Any], tolerance: float = 1e-3) -> tuple[float | None, str | None]:
    """(TR in seconds, None) for a usable raw BOLD header and sidecar, else (None, problem).

    ``metadata`` is the BIDS sidecar after inheritance (pybids' ``get_metadata``). Only
    the header is read here; the data are checked by the run's own job.
    """
    try:
        return bold_repetition_time(path, metadata, tolerance), None
    except InputError as exc:
        return None, exc.problem


def bold_repetition_time(path: str | Path, sidecar: dict, tolerance: float = 1e-3) -> float:
    """RepetitionTime from the sidecar, checked against the NIfTI header."""
    if "RepetitionTime" not in sidecar:
        raise InputError(path, "no RepetitionTime in the BOLD sidecar")
    tr = float(sidecar["RepetitionTime"])
    img = open_nifti(path)
    if img.ndim != 4:
        raise InputError(path, f"BOLD must be 4D, got shape {img.shape}")
    zooms = img.header.get_zooms()
    unit = img.header.get_xyzt_units()[1]
    header_tr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    if abs(header_tr - tr) > tolerance:
        raise InputError(path, f"header TR {header_tr:g} s disagrees with sidecar RepetitionTime {tr:g} s")
    return tr


def check_bold_data(path: str | Path) -> dict[str, int]:
    """Read a 4D BOLD image through once; refuse truncated, non-finite, empty or constant data.

    Streams a chunk of volumes at a time (memory: one chunk plus two values per voxel).
    Non-finite values are refused anywhere in the image, not only in the brain: a
    resampling step would carry them into the brain.
    """
    from .parcellate import BoldChunks  # the streaming reader of the parcellation

    source = BoldChunks(path)  # 4D or InputError
    if source.n_volumes < 2:
        raise InputError(path, f"{source.n_volumes} volume(s): a BOLD run needs at least 2")
    low = high = None
    n_bad, first_bad = 0, None
    for start, block in source.chunks():  # (volumes, voxels), stored values
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                if first_bad is None:
                    volume, voxel = np.argwhere(bad)[0]
                    first_bad = (start + int(volume), np.unravel_index(int(voxel), source.shape, order="F"))
                n_bad += int(bad.sum())
                continue
        if n_bad:  # past the first bad chunk only counting matters
            continue
        chunk_low, chunk_high = block.min(axis=0), block.max(axis=0)
        low = chunk_low if low is None else np.minimum(low, chunk_low)
        high = chunk_high if high is None else np.maximum(high, chunk_high)
    if n_bad:
        volume, voxel = first_bad
        raise InputError(path, f"{n_bad} NaN or infinite value(s), the first in volume {volume} at voxel "
                         f"{tuple(int(v) for v in voxel)}; the image must be finite everywhere")
    constant = bool((high == low).all())
    if constant and not np.any(low * source.slope + source.inter):
        raise InputError(path, f"every voxel is 0 in all {source.n_volumes} volumes: an empty run")
    if constant:
        raise InputError(path, f"no voxel changes over the {source.n_volumes} volumes: a constant image has no signal")
    return {"n_volumes": source.n_volumes, "n_voxels_varying": int((high != low).sum())}


# --------------------------------------------------------------------------- atlases


def check_atlas_on_grid(image: str | Path, labels_before: np.ndarray, labels_after: np.ndarray) -> list[int]:
    """Refuse an atlas that lost every label when put on the template grid; return the labels lost.

    Nearest-neighbour resampling keeps the labels of an atlas that lies in template space;
    one in another space (native, or a shifted origin) lands outside the grid.
    """
    before = np.unique(labels_before[labels_before > 0])
    after = np.unique(labels_after[labels_after > 0])
    if before.size and not after.size:
        raise InputError(image, f"none of its {before.size} labels falls on the MNI152NLin6Asym 2 mm grid after "
                         "resampling: the atlas does not overlap the template (is it in MNI space?)")
    return np.setdiff1d(before, after).astype(int).tolist()
