"""The ``bids`` step: find the runs, index the dataset, validate it, write a manifest.

Run discovery is a cheap glob + pybids filename parse, because Snakemake repeats it
every time it parses the workflow (on SLURM: in every job); the full pybids index and
the official validator run once, in the ``bids`` rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from bids.layout import BIDSLayout, parse_file_entities

from .checks import raw_bold_problem
from .errors import InputError
from .io import open_nifti, sha256sum
from .naming import run_key

BOLD_GLOBS = ("sub-*/func/*_bold.nii.gz", "sub-*/func/*_bold.nii", "sub-*/ses-*/func/*_bold.nii.gz", "sub-*/ses-*/func/*_bold.nii")


def discover_runs(bids_dir: str | Path, subjects: list[str] | None = None, tasks: list[str] | None = None) -> dict[str, Path]:
    """Map run key -> raw BOLD path for every BOLD run (optionally filtered)."""
    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    runs: dict[str, Path] = {}
    for pattern in BOLD_GLOBS:
        for path in sorted(bids_dir.glob(pattern)):
            entities = parse_file_entities(str(path))
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


def build_manifest(bids_dir: str | Path) -> pd.DataFrame:
    """One row per file of the raw dataset: path, sha256, entities, and for NIfTI images shape and TR.

    ``problem`` says why a NIfTI file (or a BOLD file's TR) is unusable, empty otherwise.

    Uses pybids' full index so the entities are those any BIDS tool would read.
    """
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
