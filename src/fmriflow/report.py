"""The ``report`` step: one self-contained HTML page summarising a run of the workflow.

The page opens offline: its CSS is inline and its figures are PNG data URIs; it links
to nothing. It is deterministic: the same inputs give the same bytes (no timestamps;
the PNGs carry no software or date chunk; figures are drawn with matplotlib's default
style on an Agg canvas, whatever the user's matplotlibrc or pyplot backend says).

Sections: Summary, Dataset, Run QC, Coverage, Connectivity, Provenance. Every figure's
caption names the artefact files it was drawn from.
"""

from __future__ import annotations

import base64
import html
import io
import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from . import __version__
from .errors import InputError
from .io import read_json, read_tsv, sha256sum, write_text
from .provenance import sidecar_path, software_versions

PathLike = str | Path

# A424 label ranges (see atlas.py), drawn as boundaries on matrices and coverage plots.
A424_GROUPS = (("Cortex R", 1, 180), ("Cortex L", 181, 360), ("Subcortex", 361, 396), ("Cerebellum", 397, 424))

DPI = 100  # fixed, so that figure bytes do not depend on the machine's defaults
_MAX_TICK_RUNS = 40  # beyond this many runs, per-run tick labels are left out of figures
_MAX_INLINE_SOURCES = 6  # beyond this many files, a caption lists its sources in a <details>
_QC_NUMBERS = ("n_volumes", "tr", "mean_fd", "max_fd", "fd_threshold", "n_high_motion", "mean_std_dvars")
_DIFF_META_KEYS = ("GroupColumn", "Levels", "N", "Contrast", "Note")  # shown from the group difference's sidecar


def build_report(
    out_html: PathLike,
    *,
    participants: PathLike,
    manifest: PathLike,
    validation: PathLike,
    qc: Sequence[PathLike],
    coverage: Sequence[PathLike],
    group_fc: PathLike,
    group_diff: PathLike | None = None,
    ground_truth_edges: PathLike | None = None,
    config: Mapping[str, Any] | PathLike | None = None,
    title: str = "fmriflow report",
) -> dict:
    """Write the HTML report of one workflow run and return what it holds.

    Parameters
    ----------
    out_html : path
        The page to write (atomically).
    participants, manifest : path
        The raw ``participants.tsv`` and the ``bids`` step's manifest TSV.
    validation : path
        The ``bids`` step's validation JSON.
    qc, coverage : list of paths
        The one-row run QC tables and the per-run A424 coverage tables.
    group_fc, group_diff : path
        Group-mean FC matrix and (optionally) a group difference; the difference's JSON
        sidecar, if any, is shown (``GroupColumn``, ``Levels``, ``N``, ``Contrast``, ``Note``).
        Matrices are put in atlas-label order by region name (names of the coverage tables).
    ground_truth_edges : path, optional
        Planted edges of a demo dataset (atlas labels ``region_i``, ``region_j`` and ``delta``):
        their planted and observed differences are compared, and each edge is ranked among
        all edges by absolute observed difference.
    config : mapping or path (YAML/JSON), optional
        The resolved config, shown in the provenance section.

    Raises
    ------
    InputError
        An input file is missing or unusable; the message names it.

    Returns
    -------
    dict
        ``path``, ``sections`` (ids), ``figures`` (number, caption, sources), ``n_subjects``,
        ``n_runs``, ``dropped_regions`` and ``ground_truth`` (recovery numbers, or None).
    """
    qc, coverage = list(qc), list(coverage)
    if not qc:
        raise ValueError("'qc' must list at least one run QC table; an empty list was provided")
    if not coverage:
        raise ValueError("'coverage' must list at least one coverage table; an empty list was provided")
    if ground_truth_edges is not None and group_diff is None:
        raise ValueError("'ground_truth_edges' needs 'group_diff': planted edges are compared with the observed difference")

    # Text columns stay text ("01" is not 1); summaries convert numbers where they see them.
    people = _read_table(participants, ["participant_id"], dtype=str)
    files = _read_table(manifest, ["path", "sha256"], dtype=str)
    checks = _read_validation(validation)
    runs = _read_qc(qc)
    cov = _read_coverage(coverage)
    regions = _regions(cov)
    fc = _read_matrix(group_fc, regions)
    diff = _read_matrix(group_diff, regions) if group_diff is not None else None
    diff_meta = _read_diff_meta(group_diff) if group_diff is not None else {}
    edges = _read_edges(ground_truth_edges, regions) if ground_truth_edges is not None else None
    config = _read_config(config)

    figures = _Figures()
    run_table = _run_table(runs, cov)
    recovery = _recovery(edges, diff) if edges is not None else None
    dropped = _dropped_regions(cov, regions)
    sections = [
        ("summary", "Summary", _summary_section(people, files, checks, run_table, dropped, config, validation)),
        ("dataset", "Dataset", _dataset_section(people, participants)),
        ("run-qc", "Run QC", _qc_section(run_table, runs, qc, coverage, figures)),
        ("coverage", "Coverage", _coverage_section(cov, regions, dropped, coverage, config, figures)),
        ("connectivity", "Connectivity", _connectivity_section(
            fc, diff, diff_meta, recovery, regions, group_fc, group_diff, ground_truth_edges, figures)),
        ("provenance", "Provenance", _provenance_section(
            config, files, manifest,
            _input_files(participants, manifest, validation, qc, coverage, group_fc, group_diff,
                         _existing_sidecar(group_diff), ground_truth_edges))),
    ]
    write_text(out_html, _page(title, sections))
    return {
        "path": str(out_html),
        "sections": [sid for sid, _, _ in sections],
        "figures": figures.items,
        "n_subjects": int(people["participant_id"].nunique()),
        "n_runs": len(run_table),
        "dropped_regions": dropped["name"].tolist(),
        "ground_truth": None if recovery is None else recovery["summary"],
    }


# ----------------------------------------------------------------------------- sections


def _summary_section(people, files, checks, runs, dropped, config, validation_path) -> str:
    is_image = files["path"].str.endswith((".nii", ".nii.gz"))
    n_bold = int((is_image & (files["suffix"] == "bold")).sum()) if "suffix" in files else None
    cards = [
        ("Subjects (participants.tsv)", people["participant_id"].nunique(), ""),
        ("Subjects with processed runs", runs["subject"].nunique(), ""),
        ("Raw BOLD files (manifest)", "n/a" if n_bold is None else n_bold, ""),
        ("Runs processed", len(runs), ""),
        ("Validator errors", checks["n_errors"], "bad" if checks["n_errors"] else "good"),
        ("Validator warnings", checks["n_warnings"], "warn" if checks["n_warnings"] else "good"),
        ("Regions dropped in at least one run", len(dropped), "warn" if len(dropped) else "good"),
    ]
    parts = ['<div class="cards">']
    parts += [f'<div class="card {cls}"><div class="value">{_esc(v)}</div><div>{_esc(k)}</div></div>'
              for k, v, cls in cards]
    parts.append("</div>")
    mode = _config_get(config, "preproc", "mode")
    if mode is not None:
        parts.append(f"<p>Preprocessing mode: <code>{_esc(mode)}</code>.</p>")
        if mode == "lite":
            parts.append('<p class="note bad">Preprocessed with the <b>lite</b> mode: a minimal preprocessing '
                         "from pip-installable tools, not fMRIPrep. Interpret motion and connectivity with that in mind.</p>")
    validator = " ".join(str(checks.get(k) or "") for k in ("validator", "validator_version")).strip() or "validator"
    parts.append(f"<p>BIDS validation by <code>{_esc(validator)}</code> ({_esc(_name(validation_path))}).</p>")
    if checks.get("errors"):
        parts.append(_details(f"Validator errors ({len(checks['errors'])})",
                              "<ul>" + "".join(f"<li>{_esc(e)}</li>" for e in checks["errors"]) + "</ul>"))
    if checks.get("warnings"):
        parts.append("<p>Warning codes: " + ", ".join(f"<code>{_esc(w)}</code>" for w in checks["warnings"]) + "</p>")
    if checks.get("summary"):
        parts.append(_details("Validator summary", _key_value_table(checks["summary"])))
    return "\n".join(parts)


def _dataset_section(people, participants_path) -> str:
    counts = [(col, _column_summary(people[col])) for col in people.columns if col != "participant_id"]
    parts = [f"<p>{len(people)} participants in <code>{_esc(_name(participants_path))}</code>.</p>"]
    if counts:
        parts.append("<h3>Group counts</h3>")
        parts.append(_table(["Column", "Summary"], counts, table_id="group-counts"))
    parts.append("<h3>Participants</h3>")
    parts.append(_table(list(people.columns), people.itertuples(index=False), table_id="participants", scroll=True))
    return "\n".join(parts)


def _qc_section(run_table, runs, qc_paths, coverage_paths, figures) -> str:
    headers = ["Run", "Subject", "Volumes", "TR (s)", "Mean FD (mm)", "Max FD (mm)", "High-motion volumes",
               "Mean std DVARS", "Min coverage", "Median coverage", "Regions dropped"]
    rows = [
        (r.label, r.subject, _fmt(r.n_volumes, "d"), _fmt(r.tr, ".3g"), _fmt(r.mean_fd, ".3f"), _fmt(r.max_fd, ".3f"),
         _high_motion(r.n_high_motion, r.fd_threshold), _fmt(r.mean_std_dvars, ".3f"),
         _fmt(r.min_coverage, ".3f"), _fmt(r.median_coverage, ".3f"), _fmt(r.n_dropped, "d"))
        for r in run_table.itertuples(index=False)
    ]
    parts = [
        "<p>One row per run. FD is Power framewise displacement; a high-motion volume has FD above the "
        "run's threshold. Coverage is the share of a region's A424 voxels inside the run's brain mask.</p>",
        _table(headers, rows, table_id="qc-table", scroll=True),
        f'<div class="source">Tables: {_sources_html(qc_paths + coverage_paths)}</div>',
    ]
    fd = runs.sort_values("label")
    parts.append(figures.add(
        lambda fig: _draw_fd(fig, fd), _wide(len(fd)), 3.6,
        "Mean framewise displacement per run (bars), maximum FD (triangles) and the high-motion threshold.",
        qc_paths,
    ))
    return "\n".join(parts)


def _coverage_section(cov, regions, dropped, coverage_paths, config, figures) -> str:
    matrix = np.vstack([cov[label]["coverage"].to_numpy(dtype=float) for label in sorted(cov)])
    threshold = _config_get(config, "parcellate", "min_coverage")
    parts = [figures.add(
        lambda fig: _draw_coverage(fig, matrix, sorted(cov), regions, threshold), 10, 6.5,
        "A424 region coverage across runs: median with min-max band per region label (top) and every run (bottom).",
        coverage_paths,
    )]
    if dropped.empty:
        parts.append("<p>No region was dropped in any run.</p>")
    else:
        parts.append(f"<p>{_plural(len(dropped), 'region')} dropped (NaN in the region time series, coverage "
                     "below the threshold) in at least one run.</p>")
        rows = [(int(r.index), r.name, f"{r.n_dropped} / {len(cov)}", _fmt(r.min_coverage, ".3f"),
                 _fmt(r.median_coverage, ".3f")) for r in dropped.itertuples(index=False)]
        parts.append(_table(["Label", "Region", "Runs dropped", "Min coverage", "Median coverage"], rows,
                            table_id="dropped-regions", scroll=True))
    return "\n".join(parts)


def _connectivity_section(fc, diff, diff_meta, recovery, regions, fc_path, diff_path, edges_path, figures) -> str:
    parts = [figures.add(
        lambda fig: _draw_matrix(fig, fc, regions, vmax=1.0, label="Pearson r"), 7.5, 6.4,
        "Group-mean functional connectivity (Pearson r), regions in A424 label order" + _groups_text(len(regions))
        + "; grey: undefined (NaN).",
        [fc_path],
    )]
    if diff is None:
        parts.append("<p>No group difference was computed.</p>")
        return "\n".join(parts)
    if diff_meta:
        parts.append("<h3>Group comparison</h3>")
        parts.append(_key_value_table(diff_meta, table_id="group-comparison"))
    vmax = _robust_max(diff)
    parts.append(figures.add(
        lambda fig: _draw_matrix(fig, diff, regions, vmax=vmax, label="difference of group means"), 7.5, 6.4,
        "Difference of group-mean connectivity" + (f" ({_contrast_text(diff_meta)})" if _contrast_text(diff_meta) else "")
        + _groups_text(len(regions)) + "; colour limits at the largest absolute difference; grey: undefined (NaN).",
        [diff_path],
    ))
    if recovery is not None:
        parts.append(_recovery_html(recovery, edges_path, diff_path))
    return "\n".join(parts)


def _recovery_html(recovery, edges_path, diff_path) -> str:
    s = recovery["summary"]
    headers = ["Label i", "Label j", "Region i", "Region j", "r non-responder", "r responder", "Planted delta",
               "Observed difference", "Rank by |observed|", "Same sign"]
    rows = [(int(e.region_i), int(e.region_j), e.name_i, e.name_j, _fmt(e.corr_nonresponder, ".3f"),
             _fmt(e.corr_responder, ".3f"), _fmt(e.delta, ".4f"), _fmt(e.observed, ".4f"),
             _fmt(e.rank, "d"), "n/a" if pd.isna(e.same_sign) else ("yes" if e.same_sign else "no"))
            for e in recovery["edges"].itertuples(index=False)]
    return "\n".join([
        "<h3>Ground-truth recovery</h3>",
        f"<p>{s['n_in_top_n']} of {s['n_planted']} planted edges rank among the top {s['n_planted']} of "
        f"{s['n_edges']} edges by absolute observed difference (median rank {_fmt(s['median_rank'], '.0f')}); "
        f"the observed sign matches the planted one for {s['n_same_sign']} of {s['n_planted']}.</p>",
        _table(headers, rows, table_id="ground-truth"),
        f'<div class="source">Planted: {_sources_html([edges_path])}; observed: {_sources_html([diff_path])}.</div>',
    ])


def _provenance_section(config, files, manifest_path, inputs) -> str:
    versions = dict(software_versions())
    versions.setdefault("matplotlib", _version("matplotlib"))
    git = _git_commit()
    parts = [
        f"<p>fmriflow {_esc(__version__)}; code: {_esc(git) if git else 'not run from a git checkout'}.</p>",
        "<h3>Software</h3>",
        _key_value_table(versions, table_id="software"),
        "<h3>Configuration</h3>",
        f"<pre>{_esc(_config_yaml(config))}</pre>" if config is not None else "<p>No configuration was given.</p>",
        "<h3>Report inputs</h3>",
        _table(["File", "sha256"], [(p, sha256sum(p)) for p in inputs], table_id="report-inputs", scroll=True),
    ]
    columns = [c for c in ("path", "sha256", "subject", "session", "task", "run", "suffix", "shape", "tr") if c in files]
    parts.append(_details(
        f"Raw BIDS inputs: {len(files)} files with sha256 (from {_name(manifest_path)})",
        _table(columns, files[columns].itertuples(index=False), table_id="manifest"),
    ))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- numbers


def _run_table(runs: pd.DataFrame, cov: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per run (QC and coverage joined on the run label), sorted by label."""
    cov_rows = pd.DataFrame(
        [{"label": label, "min_coverage": t["coverage"].min(), "median_coverage": t["coverage"].median(),
          "n_dropped": int((~t["used"]).sum())} for label, t in cov.items()],
        columns=["label", "min_coverage", "median_coverage", "n_dropped"],
    )
    table = runs.merge(cov_rows, on="label", how="outer").sort_values("label", kind="stable")
    for col in _QC_NUMBERS:
        if col not in table:
            table[col] = np.nan
    table["subject"] = _subjects(table["label"])
    return table.reset_index(drop=True)


def _dropped_regions(cov: dict[str, pd.DataFrame], regions: pd.DataFrame) -> pd.DataFrame:
    used = np.vstack([t["used"].to_numpy(dtype=bool) for t in cov.values()])
    coverage = np.vstack([t["coverage"].to_numpy(dtype=float) for t in cov.values()])
    table = regions.assign(
        n_dropped=(~used).sum(axis=0),
        min_coverage=coverage.min(axis=0),
        median_coverage=np.median(coverage, axis=0),
    )
    return table[table["n_dropped"] > 0].reset_index(drop=True)


def _recovery(edges: pd.DataFrame, diff: np.ndarray) -> dict:
    """Planted vs observed difference at each planted edge, and its rank among all edges."""
    observed = diff[edges["pos_i"].to_numpy(), edges["pos_j"].to_numpy()]
    upper = diff[np.triu_indices(diff.shape[0], k=1)]
    magnitudes = np.abs(upper[np.isfinite(upper)])
    ranks = [1 + int((magnitudes > abs(v)).sum()) if np.isfinite(v) else np.nan for v in observed]
    same = [bool(np.sign(o) == np.sign(d)) if np.isfinite(o) and np.isfinite(d) else np.nan
            for o, d in zip(observed, edges["delta"].to_numpy(dtype=float))]
    table = edges.assign(observed=observed, rank=ranks, same_sign=same)
    n = len(table)
    finite_ranks = table["rank"].dropna()
    summary = {
        "n_planted": n,
        "n_edges": int(magnitudes.size),
        "n_in_top_n": int((finite_ranks <= n).sum()),
        "median_rank": float(finite_ranks.median()) if len(finite_ranks) else float("nan"),
        "n_same_sign": int(sum(s is True for s in same)),
    }
    return {"edges": table, "summary": summary}


def _column_summary(values: pd.Series) -> str:
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


def _robust_max(matrix: np.ndarray) -> float:
    off = matrix[~np.eye(matrix.shape[0], dtype=bool)]
    off = np.abs(off[np.isfinite(off)])
    return float(off.max()) if off.size and off.max() > 0 else 1.0


# ----------------------------------------------------------------------------- reading


def _require_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return path


def _read_table(path: PathLike, required: Sequence[str], **kwargs: Any) -> pd.DataFrame:
    try:
        table = read_tsv(_require_file(path), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable TSV ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {missing}; has {list(table.columns)}")
    return table


def _read_validation(path: PathLike) -> dict:
    try:
        data = read_json(_require_file(path))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not {"n_errors", "n_warnings"} <= set(data):
        raise InputError(path, "validation JSON must be an object with 'n_errors' and 'n_warnings'")
    return data


def _read_qc(paths: list[PathLike]) -> pd.DataFrame:
    frames = []
    for path in paths:
        table = _read_table(path, ["run", "mean_fd", "max_fd"])
        if table.empty:
            raise InputError(path, "QC table has no rows")
        for col in _QC_NUMBERS:
            if col in table and not pd.api.types.is_numeric_dtype(table[col]):
                raise InputError(path, f"column {col!r} must hold numbers (or 'n/a'), got {table[col].tolist()}")
        frames.append(table)
    runs = pd.concat(frames, ignore_index=True)
    runs["label"] = [Path(str(r)).name for r in runs["run"]]
    runs["subject"] = _subjects(runs["label"])
    repeated = runs["label"][runs["label"].duplicated()].tolist()
    if repeated:
        raise InputError(None, f"QC tables repeat run(s) {repeated}")
    return runs


def _read_coverage(paths: list[PathLike]) -> dict[str, pd.DataFrame]:
    """Coverage tables keyed by run label (file name before ``_space-``), all on one region list."""
    tables: dict[str, pd.DataFrame] = {}
    first: pd.DataFrame | None = None
    for path in paths:
        table = _read_table(path, ["index", "name", "coverage", "used"]).sort_values("index", kind="stable")
        table = table.reset_index(drop=True)
        table["used"] = _as_bool(table["used"], path)
        values = pd.to_numeric(table["coverage"], errors="coerce")
        if not values.between(0.0, 1.0).all():
            raise InputError(path, "column 'coverage' must hold a number within [0, 1] in every row")
        table["coverage"] = values.astype(float)
        label = _coverage_label(path)
        if label in tables:
            raise InputError(path, f"a second coverage table for run {label}")
        if first is None:
            first = table
        elif not (table["index"].tolist() == first["index"].tolist() and table["name"].tolist() == first["name"].tolist()):
            raise InputError(path, f"regions differ from those of {paths[0]}")
        tables[label] = table
    return tables


def _subjects(labels: pd.Series) -> list[str]:
    """Subject labels from run labels (``sub-01_task-rest`` -> ``01``), kept as text."""
    return [str(label).split("_")[0].removeprefix("sub-") for label in labels]


def _coverage_label(path: PathLike) -> str:
    name = Path(path).name
    return name.split("_space-")[0] if "_space-" in name else name.removesuffix(".tsv")


def _regions(cov: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return next(iter(cov.values()))[["index", "name"]].reset_index(drop=True)


def _as_bool(values: pd.Series, path: PathLike) -> pd.Series:
    mapping = {True: True, False: False, "True": True, "False": False, "true": True, "false": False, 1: True, 0: False}
    out = values.map(lambda v: mapping.get(v))
    if out.isna().any():
        raise InputError(path, "column 'used' must hold True/False in every row")
    return out.astype(bool)


def _read_matrix(path: PathLike, regions: pd.DataFrame) -> np.ndarray:
    """A square region x region TSV as an array, rows and columns in region-label order.

    Matrices whose region names are those of the coverage tables are put in label order
    by name; others must already be in label order (label k is row k-1).
    """
    table = _read_table(path, [], index_col=0)
    names = [str(n) for n in table.index]
    if [str(c) for c in table.columns] != names:
        raise InputError(path, f"not a square region matrix: {len(names)} rows, {len(table.columns)} columns "
                               "(the header must repeat the row names)")
    if len(names) != len(regions):
        raise InputError(path, f"{len(names)} regions, the coverage tables have {len(regions)}")
    values = table.to_numpy(dtype=float)
    order = regions["name"].astype(str).tolist()
    if set(names) == set(order) and names != order:
        position = {n: k for k, n in enumerate(names)}
        take = [position[n] for n in order]
        values = values[np.ix_(take, take)]
    return values


def _read_diff_meta(path: PathLike) -> dict:
    sidecar = _existing_sidecar(path)
    if sidecar is None:
        return {}
    try:
        data = read_json(sidecar)
    except json.JSONDecodeError as exc:
        raise InputError(sidecar, f"not valid JSON ({exc})") from exc
    return {k: data[k] for k in _DIFF_META_KEYS if isinstance(data, dict) and k in data}


def _existing_sidecar(path: PathLike | None) -> Path | None:
    return sidecar_path(path) if path is not None and sidecar_path(path).is_file() else None


def _read_edges(path: PathLike, regions: pd.DataFrame) -> pd.DataFrame:
    """Planted edges, with the matrix positions (``pos_i``, ``pos_j``) of their atlas labels."""
    edges = _read_table(path, ["region_i", "region_j", "delta"])
    for col in ("name_i", "name_j", "corr_nonresponder", "corr_responder"):
        if col not in edges:
            edges[col] = np.nan
    labels = edges[["region_i", "region_j"]]
    if not all(pd.api.types.is_integer_dtype(labels[c]) for c in labels):
        raise InputError(path, "region_i and region_j must be integer atlas labels in every row")
    position = {int(label): k for k, label in enumerate(regions["index"])}
    known = labels.isin(list(position)).all().all()
    if not known or (labels["region_i"] == labels["region_j"]).any():
        raise InputError(path, "region labels must be distinct pairs of the atlas labels "
                               f"({min(position)}..{max(position)}) in every row")
    return edges.assign(pos_i=labels["region_i"].map(position), pos_j=labels["region_j"].map(position))


def _read_config(config: Mapping[str, Any] | PathLike | None) -> dict | None:
    if config is None:
        return None
    if isinstance(config, (str, Path)):
        with open(_require_file(config), encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    if not isinstance(config, Mapping):
        raise TypeError(f"'config' must be a mapping or a YAML/JSON file. Got: {config.__class__.__name__}")
    # Plain JSON types only (Paths, numpy scalars -> str/float), keeping the key order.
    return json.loads(json.dumps(config, default=str))


def _input_files(*items: PathLike | Sequence[PathLike] | None) -> list[str]:
    """Every input file as given (lists flattened, None left out)."""
    out: list[str] = []
    for item in items:
        if item is not None:
            out += [str(p) for p in ([item] if isinstance(item, (str, Path)) else item)]
    return out


# ----------------------------------------------------------------------------- figures


class _Figures:
    """Numbers the figures of the page and records their captions and sources."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, draw: Callable, width: float, height: float, caption: str, sources: Sequence[PathLike]) -> str:
        number = len(self.items) + 1
        names = [str(s) for s in sources]
        self.items.append({"number": number, "caption": caption, "sources": names})
        return (
            f'<figure id="figure-{number}"><img alt="{_esc(caption)}" src="{_png(draw, width, height)}">'
            f"<figcaption><b>Figure {number}.</b> {_esc(caption)} Drawn from: {_sources_html(names)}</figcaption></figure>"
        )


def _png(draw: Callable, width: float, height: float) -> str:
    """Draw a figure with ``draw(fig)`` and return it as a PNG data URI.

    The figure lives on its own Agg canvas (no pyplot, so nothing global to switch or
    close); matplotlib's default style replaces the user's rc so bytes are reproducible.
    """
    import matplotlib.style
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"), rc_context({"font.size": 9, "axes.titlesize": 10}):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_fd(fig, runs: pd.DataFrame) -> None:
    ax = fig.subplots()
    x = np.arange(len(runs))
    ax.bar(x, runs["mean_fd"].to_numpy(dtype=float), color="#4c72b0", label="mean FD")
    ax.scatter(x, runs["max_fd"].to_numpy(dtype=float), marker="v", color="#dd8452", zorder=3, label="max FD")
    thresholds = runs["fd_threshold"].dropna().unique() if "fd_threshold" in runs else []
    for t in sorted(thresholds):
        ax.axhline(t, ls="--", lw=1, color="#555555", label=f"threshold {t:g} mm")
    if len(runs) <= _MAX_TICK_RUNS:
        ax.set_xticks(x, runs["label"].tolist(), rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(runs)} runs, in run-label order")
    ax.set_ylabel("framewise displacement (mm)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, frameon=False, fontsize=8)


def _draw_coverage(fig, matrix: np.ndarray, labels: list[str], regions: pd.DataFrame, threshold) -> None:
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.4])
    x = regions["index"].to_numpy(dtype=float)
    top.fill_between(x, matrix.min(axis=0), matrix.max(axis=0), step="mid", color="#c6dbef",
                     label="min-max across runs")
    top.step(x, np.median(matrix, axis=0), where="mid", color="#08519c", lw=0.8, label="median")
    if isinstance(threshold, (int, float)):
        top.axhline(threshold, ls="--", lw=1, color="#a50f15", label=f"min_coverage {threshold:g}")
    top.set_ylim(0, 1.02)
    top.set_ylabel("coverage")
    top.legend(loc="lower left", fontsize=7)
    image = bottom.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                          extent=(x[0] - 0.5, x[-1] + 0.5, len(labels) - 0.5, -0.5))
    if len(labels) <= _MAX_TICK_RUNS:
        bottom.set_yticks(np.arange(len(labels)), labels, fontsize=6)
    else:
        bottom.set_ylabel(f"{len(labels)} runs")
    bottom.set_xlabel("A424 region label")
    fig.colorbar(image, ax=bottom, label="coverage", shrink=0.9)
    for ax in (top, bottom):
        for boundary in _boundaries(len(x)):
            ax.axvline(boundary + 0.5, color="white" if ax is bottom else "#777777", lw=0.8)
    for name, start, stop in _groups(len(x)):
        top.text((start + stop) / 2, 1.01, name, ha="center", va="bottom", fontsize=7, transform=top.get_xaxis_transform())


def _draw_matrix(fig, matrix: np.ndarray, regions: pd.DataFrame, *, vmax: float, label: str) -> None:
    import matplotlib

    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#bdbdbd")
    image = ax.imshow(matrix, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    for boundary in _boundaries(len(matrix)):
        ax.axhline(boundary - 0.5, color="black", lw=0.6)
        ax.axvline(boundary - 0.5, color="black", lw=0.6)
    groups = _groups(len(matrix))
    if groups:
        centres = [(start + stop) / 2 - 1 for _, start, stop in groups]
        names = [name for name, _, _ in groups]
        ax.set_xticks(centres, names, fontsize=8, rotation=90)
        ax.set_yticks(centres, names, fontsize=8)
    else:
        ax.set_xlabel("region (label order)")
        ax.set_ylabel("region (label order)")
    fig.colorbar(image, ax=ax, label=label, shrink=0.85)


def _groups(n_regions: int) -> tuple:
    return A424_GROUPS if n_regions == A424_GROUPS[-1][2] else ()


def _boundaries(n_regions: int) -> list[int]:
    """The last label of every group but the last one: a boundary line is drawn just after each."""
    return [stop for _, _, stop in _groups(n_regions)[:-1]]


def _groups_text(n_regions: int) -> str:
    groups = _groups(n_regions)
    return " (lines: " + ", ".join(f"{n} {a}-{b}" for n, a, b in groups) + ")" if groups else ""


def _wide(n_runs: int) -> float:
    return float(min(14.0, max(6.0, 0.22 * n_runs + 2.0)))


# ----------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:1rem 2rem 3rem;background:#fff}
header{border-bottom:1px solid #d0d7de;margin-bottom:1rem}
nav a{margin-right:1rem;color:#0969da;text-decoration:none}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f6;position:sticky;top:0}
tbody tr:nth-child(even){background:#f8f9fb}
.scroll{max-height:28rem;overflow:auto;border:1px solid #d0d7de;display:inline-block;max-width:100%}
.scroll table{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .8rem;min-width:9rem;font-size:.8rem}
.card .value{font-size:1.5rem;font-weight:600}
.good{border-left:4px solid #1a7f37}.warn{border-left:4px solid #bf8700}.bad{border-left:4px solid #cf222e}
.note{padding:.4rem .6rem;background:#fff8f8}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,.source{font-size:.8rem;color:#57606a}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
code{font-size:.85em}
details{margin:.5rem 0}summary{cursor:pointer}
"""


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{sid}">{_esc(heading)}</a>' for sid, heading, _ in sections)
    body = "\n".join(f'<section id="{sid}">\n<h2>{_esc(heading)}</h2>\n{content}\n</section>'
                     for sid, heading, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_esc(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header>\n<h1>{_esc(title)}</h1>\n<nav>{nav}</nav>\n</header>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _table(headers: Sequence[str], rows, *, table_id: str | None = None, scroll: bool = False) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{_esc(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    attr = f' id="{_esc(table_id)}"' if table_id else ""
    table = f"<table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def _key_value_table(data: Mapping[str, Any], table_id: str | None = None) -> str:
    rows = [(k, v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, sort_keys=True, default=str))
            for k, v in data.items()]
    return _table(["Key", "Value"], rows, table_id=table_id)


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{_esc(summary)}</summary>\n{content}\n</details>"


def _sources_html(paths: Sequence[PathLike]) -> str:
    items = [f"<code>{_esc(str(p))}</code>" for p in paths]
    if len(items) <= _MAX_INLINE_SOURCES:
        return ", ".join(items)
    return _details(f"{len(items)} files", "<br>".join(items))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    """Text of a table cell: 'n/a' for missing, integers without '.0', other floats to 4 significant digits."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _fmt(value: Any, spec: str) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return format(int(value) if spec == "d" else float(value), spec)


def _high_motion(n: Any, threshold: Any) -> str:
    text = _fmt(n, "d")
    return text if pd.isna(threshold) else f"{text} (FD > {float(threshold):g} mm)"


def _contrast_text(meta: Mapping[str, Any]) -> str:
    if meta.get("Contrast"):
        return str(meta["Contrast"])
    levels = meta.get("Levels")
    return f"{meta.get('GroupColumn') or 'group'}: {levels}" if levels else ""


def _config_get(config: Mapping[str, Any] | None, *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _config_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _name(path: PathLike) -> str:
    return Path(path).name


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    """The commit of the git checkout in the working directory (with a note if it has changes), or None."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = " (with uncommitted changes)" if status.stdout.strip() else ""
    return f"git commit {commit.stdout.strip()}{dirty}"
