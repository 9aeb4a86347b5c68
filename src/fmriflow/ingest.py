"""The ``bids`` step: find the runs, index the dataset, validate it, write a manifest.

Run discovery and each run's sidecars come from file names alone (a directory walk and one
compiled pattern, no pybids), because Snakemake repeats them every time it reads the
workflow: on SLURM in every job, at thousands of subjects. The full pybids index and the
official validator run once, in the ``bids`` rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from .checks import raw_bold_problem
from .errors import InputError
from .io import open_nifti, sha256sum
from .naming import RUN_ENTITIES, run_key

# file-name keys -> pybids' entity names (those run keys are built from)
ENTITY_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "ce": "ceagent",
                "rec": "reconstruction", "dir": "direction", "run": "run", "echo": "echo", "part": "part",
                "chunk": "chunk"}
# key-value pairs, a suffix, an extension: sub-01_task-rest_run-1_bold.nii.gz
_BIDS_NAME = re.compile(r"^((?:[a-zA-Z]+-[a-zA-Z0-9]+_)*)([a-zA-Z0-9]+)(\.[a-zA-Z0-9.]+)?$")
BOLD_EXTENSIONS = (".nii.gz", ".nii")
# top-level folders that are not raw data (pybids' default ignore list) and hidden files
NOT_RAW = ("code", "derivatives", "models", "sourcedata", "stimuli")

_LABEL = "[a-zA-Z0-9]+"
_RUN_KEYS = "|".join(k for k, v in ENTITY_NAMES.items() if v in RUN_ENTITIES and v != "subject")
# Any run key (sub-01/[ses-1/]func/sub-01[_ses-1]_task-rest[_run-1]): the ``run`` wildcard's constraint.
# Generic, not an alternation of the dataset's runs, which Snakemake would copy into every
# pattern (a plan quadratic in the number of runs); only run entities, so a run key never
# swallows derivative entities (space-, desc-, ...).
RUN_KEY_PATTERN = rf"sub-{_LABEL}/(?:ses-{_LABEL}/)?func/sub-{_LABEL}(?:_(?:{_RUN_KEYS})-{_LABEL})*"


def parse_name(name: str) -> dict[str, str] | None:
    """Entities (pybids names; unknown keys as written), ``suffix`` and ``extension`` of a BIDS
    file name; None when the name is not key-value pairs and a suffix."""
    match = _BIDS_NAME.match(name)
    if match is None:
        return None
    pairs = [part.split("-", 1) for part in match[1].split("_") if part]
    entities = {ENTITY_NAMES.get(key, key): value for key, value in pairs}
    return {**entities, "suffix": match[2], "extension": match[3] or ""}


def _dirs(folder: Path, prefix: str) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.name.startswith(prefix) and e.is_dir())


def _bold_files(bids_dir: Path) -> Iterator[Path]:
    """sub-*/[ses-*/]func/*_bold.nii[.gz], one directory listing per folder."""
    for subject in _dirs(bids_dir, "sub-"):
        for folder in [subject, *_dirs(subject, "ses-")]:
            func = folder / "func"
            if func.is_dir():
                with os.scandir(func) as entries:
                    yield from sorted(func / e.name for e in entries if e.name.endswith(("_bold.nii.gz", "_bold.nii")))


def discover_runs(bids_dir: str | Path, subjects: list[str] | None = None, tasks: list[str] | None = None) -> dict[str, Path]:
    """Map run key -> raw BOLD path for every BOLD run (optionally filtered)."""
    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    runs: dict[str, Path] = {}
    for path in _bold_files(bids_dir):
        entities = parse_name(path.name)
        if entities is None or "subject" not in entities or "task" not in entities:
            raise InputError(path, "not a BIDS BOLD name (expected sub-<label>[_ses-<label>]_task-<label>[_...]_bold.nii[.gz])")
        if subjects and entities.get("subject") not in subjects:
            continue
        if tasks and entities.get("task") not in tasks:
            continue
        key = run_key(entities)
        if key in runs:
            raise InputError(path, f"run {key} is stored twice ({runs[key].name} and {path.name})")
        runs[key] = path
    if not runs:
        raise InputError(bids_dir, "no BOLD runs found (expected sub-*/[ses-*/]func/*_bold.nii[.gz])")
    return dict(sorted(runs.items()))


class Sidecars:
    """The JSON sidecars of raw data files by the BIDS inheritance principle, from directory listings.

    A sidecar applies to a data file when it sits in the file's folder or one above it (up to
    the dataset root), has the same suffix, and each of its entities is one of the file's with
    the same value. Listings are read once per folder, so finding the sidecars of every run costs
    one listing per folder, not one per run and folder.
    """

    def __init__(self, bids_dir: str | Path):
        self.root = Path(bids_dir)
        self._listings: dict[Path, list[tuple[str, dict]]] = {}

    def _jsons(self, folder: Path) -> list[tuple[str, dict]]:
        if folder not in self._listings:
            names = sorted(os.listdir(folder)) if folder.is_dir() else []
            parsed = ((n, parse_name(n)) for n in names if n.endswith(".json") and not n.startswith("."))
            self._listings[folder] = [(n, e) for n, e in parsed if e is not None]
        return self._listings[folder]

    def levels(self, path: str | Path) -> list[list[Path]]:
        """Per folder from the dataset root down to the file's, the sidecars there that apply to ``path``."""
        path = Path(path)
        data = parse_name(path.name)
        if data is None:
            return []
        wanted = {k: v for k, v in data.items() if k not in ("suffix", "extension")}
        rel = Path(os.path.relpath(path.parent, self.root)).parts
        found = []
        for depth in range(len(rel) + 1):
            folder = self.root.joinpath(*rel[:depth])
            found.append([folder / name for name, ent in self._jsons(folder)
                          if ent["suffix"] == data["suffix"] and ent["extension"] == ".json"
                          and all(wanted.get(k) == v for k, v in ent.items() if k not in ("suffix", "extension"))])
        return found

    def of(self, path: str | Path) -> list[Path]:
        """Every sidecar that applies to ``path``, least specific first (a later one's values win)."""
        return [sidecar for level in self.levels(path) for sidecar in level]


def merged_metadata(data_file: str | Path, sidecars: list[str | Path]) -> dict[str, Any]:
    """The metadata of ``data_file`` from its sidecars (least specific first, as ``Sidecars.of``
    lists them): deeper folders override. Two sidecars of one folder that both apply are an error
    (BIDS allows one per level), named with both files."""
    merged: dict[str, Any] = {}
    by_folder: dict[Path, Path] = {}
    for sidecar in map(Path, sidecars):
        if sidecar.parent in by_folder:
            raise InputError(data_file, f"two sidecars of one folder apply to it ({by_folder[sidecar.parent].name} and "
                                        f"{sidecar.name}); BIDS allows one per folder level")
        by_folder[sidecar.parent] = sidecar
        try:
            merged.update(json.loads(Path(sidecar).read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(sidecar, f"unreadable JSON sidecar ({exc})") from None
    return merged


def raw_files(bids_dir: str | Path) -> Iterator[Path]:
    """Every file of the raw dataset (not code/, derivatives/, sourcedata/, ... nor hidden files), sorted."""
    root = Path(bids_dir)
    for folder, dirs, files in os.walk(root):
        top = Path(folder) == root
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in NOT_RAW))
        yield from (Path(folder) / f for f in sorted(files) if not f.startswith("."))


def listing_fingerprint(bids_dir: str | Path) -> str:
    """A hash of every raw file's path, size and modification time: it changes when a file is
    added, removed, touched or rewritten (the ``bids`` step's rerun trigger, without reading data)."""
    digest = hashlib.sha256()
    for path in raw_files(bids_dir):
        stat = path.stat()
        digest.update(f"{path.relative_to(bids_dir).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def validator_executable() -> str:
    """The ``bids-validator-deno`` installed beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("bids-validator-deno")
    found = str(beside) if beside.exists() else shutil.which("bids-validator-deno")
    if not found:
        raise RuntimeError("bids-validator-deno is not installed (pip install bids-validator-deno)")
    return found


def run_validator(bids_dir: str | Path) -> dict:
    """Run the official BIDS validator; return its issues as counts and a list."""
    proc = subprocess.run(
        [validator_executable(), str(bids_dir), "--format", "json"],
        capture_output=True, text=True, check=False,
    )
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"bids-validator-deno gave no JSON (exit {proc.returncode}): {proc.stderr[-2000:]}") from exc
    issues = result.get("issues", {}).get("issues", [])
    summary = result.get("summary", {})
    errors = [i for i in issues if i.get("severity") == "error"]
    warnings = [i for i in issues if i.get("severity") == "warning"]
    return {
        "validator": "bids-validator-deno",
        "validator_version": result.get("summary", {}).get("schemaVersion"),
        "n_errors": len(errors),
        "n_warnings": len(warnings),
        "errors": [_issue_line(i) for i in errors],
        "warnings": sorted({i.get("code", "?") for i in warnings}),
        "summary": {k: summary.get(k) for k in ("subjects", "sessions", "tasks", "totalFiles", "size") if k in summary},
    }


def _issue_line(issue: dict) -> str:
    where = issue.get("location", "")
    # subCode names the field for SIDECAR_KEY_REQUIRED and the like (e.g. RepetitionTime); the
    # message is then the field's whole definition, left out
    code = issue.get("code", "?") + (f" ({issue['subCode']})" if issue.get("subCode") else "")
    message = (issue.get("issueMessage") or "").strip().splitlines()
    detail = message[0] if message and not message[0].startswith("Field description") else ""
    return f"{code}: {where} {detail}".strip()


def build_manifest(bids_dir: str | Path) -> "pd.DataFrame":
    """One row per file of the raw dataset: path, sha256, entities, and for NIfTI images shape and TR.

    ``problem`` says why a NIfTI file (or a BOLD file's TR) is unusable, empty otherwise.

    Uses pybids' full index so the entities are those any BIDS tool would read.
    """
    import pandas as pd
    from bids.layout import BIDSLayout  # seconds to import: only this step needs it

    bids_dir = Path(bids_dir)
    layout = BIDSLayout(bids_dir, validate=False, derivatives=False)
    rows = []
    for f in sorted(layout.get(return_type="object"), key=lambda f: f.path):
        # relative to pybids' own root, not a resolved path: a dataset reached through a
        # symlink, or whose files are symlinks (DataLad/git-annex), keeps its BIDS names
        rel = Path(f.path).relative_to(layout.root)
        ent = f.get_entities()
        row = {
            "path": rel.as_posix(),
            "sha256": sha256sum(f.path),
            "subject": ent.get("subject"),
            "session": ent.get("session"),
            "task": ent.get("task"),
            "run": ent.get("run"),
            "suffix": ent.get("suffix"),
            "shape": None,
            "tr": None,
            "problem": None,
        }
        if rel.name.endswith((".nii", ".nii.gz")):
            # a damaged file is recorded, not raised: the dataset-wide step goes on, and
            # the run's own job fails on it (fmriflow.checks), other subjects unaffected
            try:
                row["shape"] = "x".join(map(str, open_nifti(f.path).shape))
            except InputError as exc:
                row["problem"] = exc.problem
            else:
                if ent.get("suffix") == "bold":
                    row["tr"], row["problem"] = raw_bold_problem(f.path, layout.get_metadata(f.path))
        rows.append(row)
    return pd.DataFrame(rows)
