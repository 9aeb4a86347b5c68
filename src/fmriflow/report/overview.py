"""Summary and Dataset sections: what data went in."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from .html import details, esc, key_value_table, name, table
from .inputs import config_get

# A BIDS file name: key-value entities, then the suffix, then the extension
# (sub-01_task-rest_bold.nii.gz, task-rest_bold.json), or a top-level table named by its suffix.
# entities + suffix + extension; or a participants/samples table; or a top-level sidecar named by its suffix
# alone (T1w.json: inherited by every T1w of the dataset)
_BIDS_NAME = re.compile(r"^(?:(?:(?:[a-zA-Z0-9]+-[a-zA-Z0-9]+_)+(?P<suffix>[a-zA-Z0-9]+)|(?P<table>participants|samples))"
                        r"\.[a-zA-Z][a-zA-Z0-9]*(?:\.[a-zA-Z][a-zA-Z0-9]*)*|(?P<bare>[a-zA-Z0-9]+)\.json)$")


def summary_section(people, files, checks, runs, run_qc, dropped, config, validation_path, atlas=None) -> str:
    timeseries = config_get(config, "input", "mode") == "timeseries"  # region time series in, no BOLD
    is_image = files["path"].str.endswith((".nii", ".nii.gz"))
    kind = (is_image | timeseries) & (files["suffix"] == ("timeseries" if timeseries else "bold"))
    n_bold = int(kind.sum()) if "suffix" in files else None
    n_excluded = None if run_qc is None else int((~run_qc["included"]).sum())
    cards = [
        ("Subjects (participants.tsv)", people["participant_id"].nunique(), ""),
        ("Subjects with processed runs", runs["subject"].nunique(), ""),
        ("Region time series files (manifest)" if timeseries else "Raw BOLD files (manifest)",
         "n/a" if n_bold is None else n_bold, ""),
        ("Runs processed", len(runs), ""),
        ("Runs excluded by QC", "n/a" if n_excluded is None else n_excluded, "warn" if n_excluded else "good"),
        ("Validator errors", checks["n_errors"], "bad" if checks["n_errors"] else "good"),
        ("Validator warnings", checks["n_warnings"], "warn" if checks["n_warnings"] else "good"),
        ("Regions dropped in at least one run", len(dropped), "warn" if len(dropped) else "good"),
    ]
    parts = ['<div class="cards">']
    parts += [f'<div class="card {cls}"><div class="value">{esc(v)}</div><div>{esc(k)}</div></div>'
              for k, v, cls in cards]
    parts.append("</div>")
    mode = None if timeseries else config_get(config, "preproc", "mode")
    if timeseries:
        source = config_get(config, "input", "timeseries") or {}
        parts.append(f"<p>Input: ready-made region time series (<code>input.mode: timeseries</code>, format "
                     f"<code>{esc(source.get('format'))}</code>); preprocessing, denoising and parcellation did not run "
                     "here, and the run QC has no motion, censoring or tSNR numbers unless the input carried them.</p>")
    if atlas is not None:
        how = f" (coordinates: {esc(atlas['coordinates_from'])})" if atlas.get("coordinates_from") else ""
        parts.append(f"<p>Atlas: <code>{esc(atlas['name'])}</code>, {atlas['n_regions']} regions{how}.</p>")
    if mode is not None:
        parts.append(f"<p>Preprocessing mode: <code>{esc(mode)}</code>.</p>")
        if mode == "lite":
            parts.append('<p class="note bad">Preprocessed with the <b>lite</b> mode: a minimal preprocessing '
                         "from pip-installable tools, not fMRIPrep. Interpret motion and connectivity with that in mind.</p>")
    validator = " ".join(str(checks.get(k) or "") for k in ("validator", "validator_version")).strip() or "validator"
    checked = "Input checks" if timeseries else "BIDS validation"
    parts.append(f"<p>{checked} by <code>{esc(validator)}</code> ({esc(name(validation_path))}).</p>")
    if checks.get("errors"):
        parts.append(details(f"Validator errors ({len(checks['errors'])})",
                             "<ul>" + "".join(f"<li>{esc(e)}</li>" for e in checks["errors"]) + "</ul>"))
    if checks.get("warnings"):
        parts.append("<p>Warning codes: " + ", ".join(f"<code>{esc(w)}</code>" for w in checks["warnings"]) + "</p>")
    if checks.get("summary"):
        parts.append(details("Validator summary", key_value_table(checks["summary"])))
    return "\n".join(parts)


def dataset_section(people, participants_path, files, manifest_path) -> str:
    counts = [(col, column_summary(people[col])) for col in people.columns if col != "participant_id"]
    parts = [f"<p>{len(people)} participants in <code>{esc(name(participants_path))}</code>; "
             f"{len(files)} raw files in the manifest <code>{esc(name(manifest_path))}</code> "
             "(every file with its sha256: see Provenance).</p>"]
    if "suffix" in files:
        kinds = files.assign(kind=file_kinds(files)).groupby("kind").size()
        parts.append("<h3>Manifest</h3>")
        parts.append(table(["Suffix", "Files"], kinds.items(), table_id="manifest-summary"))
    if counts:
        parts.append("<h3>Group counts</h3>")
        parts.append(table(["Column", "Summary"], counts, table_id="group-counts"))
    parts.append("<h3>Participants</h3>")
    parts.append(table(list(people.columns), people.itertuples(index=False), table_id="participants", scroll=True))
    return "\n".join(parts)


def file_kinds(files: pd.DataFrame) -> list[str]:
    """Each manifest file's suffix when its name is a BIDS name with that suffix; "other" otherwise
    (README, notes.v6, scan.1e2: pybids derives a "suffix" from any name)."""
    kinds = []
    for path, suffix in zip(files["path"], files["suffix"]):
        match = _BIDS_NAME.match(PurePosixPath(str(path)).name)
        named = (match.group("suffix") or match.group("table") or match.group("bare")) if match else None
        kinds.append(str(suffix) if named is not None and named == suffix else "other")
    return kinds


def column_summary(values: pd.Series) -> str:
    """Counts per level for categorical columns; n, mean +- sd and range for continuous ones.

    A column is continuous when every present value is a number and they are not a few
    integer codes (at most 5 distinct integers, e.g. response 0/1 or site 1..3).
    """
    present = values.dropna().astype(str)
    n_missing = len(values) - len(present)
    numbers = pd.to_numeric(present, errors="coerce")
    integer_codes = bool(np.all(np.mod(numbers, 1) == 0)) and numbers.nunique() <= 5
    if len(present) and numbers.notna().all() and not integer_codes:
        sd = numbers.std(ddof=1) if len(numbers) > 1 else 0.0
        text = (f"n={len(numbers)}, mean {numbers.mean():.4g} \u00b1 {sd:.3g}, "
                f"range {numbers.min():.4g}\u2013{numbers.max():.4g}")
    else:
        counts = present.value_counts()
        text = " \u00b7 ".join(f"{level}: {counts[level]}" for level in sorted(counts.index, key=_level_key))
    return text + (f" \u00b7 n/a: {n_missing}" if n_missing else "")


def _level_key(level: str) -> tuple:
    """Numbers first in numeric order ("2" before "10"), then text."""
    number = pd.to_numeric(level, errors="coerce")
    return (0, float(number), level) if pd.notna(number) else (1, 0.0, level)
