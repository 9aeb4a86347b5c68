"""Where a Snakemake run's time went: wall seconds per rule, from Snakemake's own records.

Snakemake keeps one JSON record per output file under ``.snakemake/metadata/`` (the file name
is the output path, URL-safe base64). Each holds the ``rule``, the job's ``starttime`` (when
the job marked its outputs incomplete), ``endtime`` (the output's modification time) and a
``job_hash`` shared by the outputs of one job. A job is the records of one (rule, job_hash):
it ran from the earliest start to the latest end. Per rule: how many jobs, the sum of their
wall seconds (core-agnostic busy time), the longest job, and the span from the rule's first
start to its last end; the run's wall time is the span of every job.

Peak memory is not in the metadata. Rules with a ``benchmark:`` file (Snakemake's benchmark
table: ``s``, ``max_rss`` in MB, ...) under ``benchmarks_dir/<rule>/`` add their largest
``max_rss``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

METADATA = ".snakemake/metadata"


def read_metadata(folder: str | Path = METADATA, since: float | None = None) -> pd.DataFrame:
    """One row per recorded output: ``output``, ``rule``, ``job``, ``start``, ``end``.

    ``since`` (seconds since the epoch) keeps the jobs that started at or after it (one run's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no Snakemake metadata folder (run Snakemake in this folder first)")
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record being written, or not Snakemake's
        if not isinstance(record, dict) or record.get("incomplete") or record.get("starttime") is None:
            continue
        rows.append({"output": _decode(path.relative_to(folder)), "rule": record.get("rule"),
                     "job": record.get("job_hash"), "start": float(record["starttime"]),
                     "end": float(record.get("endtime") or record["starttime"])})
    frame = pd.DataFrame(rows, columns=["output", "rule", "job", "start", "end"])
    if since is not None:
        first = frame.groupby(["rule", "job"], dropna=False)["start"].transform("min")
        frame = frame[first >= since]
    return frame.reset_index(drop=True)


def _decode(relative: Path) -> str:
    """A record's path back to its output: long names are split into '@'-prefixed folders."""
    parts = [p.lstrip("@") for p in relative.parts]
    try:
        return base64.urlsafe_b64decode("".join(parts)).decode()
    except (ValueError, UnicodeDecodeError):
        return str(relative)


def jobs(records: pd.DataFrame) -> pd.DataFrame:
    """One row per job: ``rule``, ``start``, ``end``, ``seconds``, ``outputs``."""
    grouped = records.groupby(["rule", "job"], dropna=False)
    table = grouped.agg(start=("start", "min"), end=("end", "max"), outputs=("output", "count")).reset_index()
    table["seconds"] = (table["end"] - table["start"]).clip(lower=0)
    return table.sort_values("start", kind="stable").reset_index(drop=True)


def read_benchmarks(folder: str | Path) -> pd.Series:
    """Largest ``max_rss`` (MB) per rule of Snakemake benchmark tables under ``folder/<rule>/``."""
    peaks: dict[str, float] = {}
    for path in sorted(Path(folder).rglob("*.tsv")) if Path(folder).is_dir() else []:
        rule = path.relative_to(folder).parts[0]
        try:
            rss = pd.read_csv(path, sep="\t")["max_rss"]
        except (KeyError, ValueError, OSError):
            continue
        rss = pd.to_numeric(rss, errors="coerce").max()
        if pd.notna(rss):
            peaks[rule] = max(peaks.get(rule, 0.0), float(rss))
    return pd.Series(peaks, name="max_rss_mb", dtype=float)


def rule_table(job_table: pd.DataFrame, peaks: pd.Series | None = None) -> pd.DataFrame:
    """Per rule: jobs, summed and longest job seconds, first start to last end; largest first."""
    grouped = job_table.groupby("rule")
    table = pd.DataFrame({"jobs": grouped.size(), "busy_s": grouped["seconds"].sum(),
                          "longest_s": grouped["seconds"].max(),
                          "span_s": grouped["end"].max() - grouped["start"].min()})
    table["max_rss_mb"] = (peaks if peaks is not None else pd.Series(dtype=float)).reindex(table.index)
    return table.sort_values("busy_s", ascending=False, kind="stable").rename_axis("rule").reset_index()


def format_timings(table: pd.DataFrame, job_table: pd.DataFrame) -> str:
    """The per-rule table and the run's wall time, as printed at the end of ``make demo``."""
    if job_table.empty:
        return "no finished Snakemake jobs recorded"
    wall = job_table["end"].max() - job_table["start"].min()
    shown = table.assign(max_rss_mb=table["max_rss_mb"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"))
    lines = [f"where the time went: {len(job_table)} jobs, {wall:.0f} s wall from the first job's start to the "
             f"last job's end; busy_s sums the jobs' wall seconds (jobs overlap on several cores)",
             shown.to_string(index=False, float_format=lambda v: f"{v:.1f}")]
    return "\n".join(lines)
