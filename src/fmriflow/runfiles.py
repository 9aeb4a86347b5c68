"""Run file lists: how a group step gathers every run's files without a Snakemake checkpoint.

A group step (group FC, the connectivity stacks, the model-ready datasets) pools the runs that
run QC includes. Which runs those are is known only once run QC has run, and a Snakemake
checkpoint that re-evaluates the group steps' inputs then makes Snakemake post-process the whole
DAG a second time: at thousands of runs, a noticeable part of every dry run. Instead, one small
job per kind of per-run file lists every run's file with its sha256 (its inputs are all those
files, so Snakemake still makes and updates each of them); the group step takes that list and the
QC table as its two inputs and reads the files of the runs QC includes.

The sha256 column makes the list change exactly when a listed file's content does, so the
group step reruns then; and where the list is small enough for Snakemake to compare checksums
(``--max-checksum-file-size``, 1 MB by default: about 2,000 rows), a list rewritten with the same
bytes (a run's file remade identically) reruns no group step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from .errors import InputError
from .io import read_tsv, sha256sum, write_tsv
from .provenance import write_sidecar

COLUMNS = ["run", "role", "path", "sha256"]


def list_step(runs: Sequence[str], files: Mapping[str, Sequence[str]], out: str) -> None:
    """Write ``out``: one row per run and role (``files``: role -> every run's file, in ``runs`` order).

    Paths are written relative to the list's folder, so that the same runs give the same bytes
    wherever the output folder is; its sidecar records every file as given, with the same sha256.
    """
    for role, paths in files.items():
        if len(paths) != len(runs):
            raise InputError(out, f"role {role!r} has {len(paths)} files for {len(runs)} runs")
    checksums = {str(p): sha256sum(p) for paths in files.values() for p in paths}
    folder = os.path.dirname(os.path.abspath(out))
    rows = [{"run": run, "role": role, "path": os.path.relpath(os.path.abspath(paths[i]), folder),
             "sha256": checksums[str(paths[i])]} for i, run in enumerate(runs) for role, paths in files.items()]
    write_tsv(out, pd.DataFrame(rows, columns=COLUMNS))
    write_sidecar(out, "qc", list(checksums), known=checksums,
                  metadata_fields={"Description": "every run's files with their sha256, read by a group step "
                                                  "beside the run QC table (which runs it includes)",
                                   "Roles": list(files)})


def included(listing: str, run_qc: str, role: str, runs: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(runs, their ``role`` files) of the runs the QC table includes, in the list's run order; the
    paths as the list's own path names them (absolute, or relative to the same folder).

    ``runs``: the plan's runs. A list and table made for a larger selection of subjects still
    hold the others when only file times decide what reruns (``--rerun-triggers mtime``): only
    the plan's are read, and a planned run that either lacks is an error naming the file.
    Otherwise the list and the table must name the same runs: a difference means one of them is
    stale, and the error names both files. None included is an error naming the table.
    """
    table = read_tsv(listing, dtype={"run": str, "role": str, "path": str, "sha256": str})
    qc = read_tsv(run_qc, dtype={"run": str})
    if role not in set(table["role"]):
        raise InputError(listing, f"lists no {role!r} files; it has {sorted(set(table['role']))}")
    rows = table[table["role"] == role]
    if runs is not None:
        for source, frame in ((listing, rows), (run_qc, qc)):
            missing = sorted(set(runs) - set(frame["run"]))
            if missing:
                raise InputError(source, f"lacks {len(missing)} planned run(s), e.g. {missing[:3]}: it is out of date")
        rows, qc = rows[rows["run"].isin(set(runs))], qc[qc["run"].isin(set(runs))]
    listed, judged = list(rows["run"]), set(qc["run"])
    if set(listed) != judged:
        odd = sorted(set(listed) ^ judged)
        raise InputError(listing, f"names other runs than the QC table {run_qc} ({len(odd)} differ, e.g. "
                                  f"{odd[:3]}): one of them is out of date")
    keep = set(qc.loc[qc["included"].astype(str) == "True", "run"])
    chosen = rows[rows["run"].isin(keep)]
    if chosen.empty:
        raise InputError(run_qc, "QC excluded every run: see the reasons in this table")
    folder = os.path.dirname(listing)
    return chosen["run"].tolist(), [os.path.normpath(os.path.join(folder, p)) for p in chosen["path"]]



def listed_files(listing: str, role: str) -> list[str]:
    """The ``role`` files a run list names that exist (every run's, included or not): what sizes a job."""
    table = read_tsv(listing, dtype={"run": str, "role": str, "path": str})
    folder = os.path.dirname(listing)
    paths = [os.path.normpath(os.path.join(folder, p)) for p in table.loc[table["role"] == role, "path"]]
    return [p for p in paths if os.path.isfile(p)]
