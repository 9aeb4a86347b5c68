"""Failure records: what a per-run step leaves, under ``qc.continue_on_failure``, when it fails.

Snakemake runs a job only when every input exists, so a run whose step failed would stop every
dataset-wide step after it. With ``qc.continue_on_failure`` a per-run step that fails writes a
failure record at each of its output paths instead: the steps after it in the same run find the
record among their inputs and pass it on (their outputs become records too), run QC lists the
run as failed with its error, and the group steps, which take the runs QC includes, go on with
the rest.

A record never looks like a complete artefact: it starts with ``MARK``, which no NIfTI, NPY or
TSV reader takes as data (a gzip or NPY reader fails on it; fmriflow's readers check for it), and
its sidecar says ``"Status": "failed"``, which ``fmriflow audit`` reports. Snakemake reruns the
step when its inputs, parameters or code change, as for any output; to retry a run whose
failure did not depend on them (memory, a node), delete its records or use ``--forcerun``.
Without the option a step that finds a record among its inputs fails, naming it.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)

MARK = b"FMRIFLOW FAILURE RECORD (not data)\n"
OPTION = "qc.continue_on_failure"


def read(path: str | Path) -> dict[str, Any] | None:
    """The failure record at ``path``, or None when the file is anything else (or absent)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(MARK)) != MARK:
                return None
            return json.loads(fh.read().decode())
    except (FileNotFoundError, IsADirectoryError):
        return None


def first(paths: Iterable[str | Path]) -> tuple[str, dict[str, Any]] | None:
    """(path, record) of the first failure record among ``paths``, or None."""
    for path in paths:
        record = read(path)
        if record is not None:
            return str(path), record
    return None


def write(outputs: Sequence[str | Path], record: dict[str, Any]) -> None:
    """Write ``record`` at every output path (atomically); one sidecar per sidecar name marks them failed.

    Outputs that share a sidecar (a matrix as TSV and NPY) share it here too; an output that is
    itself a JSON file (a sidecar the step declares) is a record only.
    """
    from .io import atomic_path
    from .provenance import sidecar_path, write_sidecar

    outputs = [str(p) for p in outputs]
    body = MARK + json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
    for out in outputs:
        with atomic_path(out) as tmp:
            tmp.write_bytes(body)
    fields = {"Status": "failed", "FailedStep": record["failed_step"], "Error": record["error"]}
    done = set(outputs)
    for out in (o for o in outputs if not o.endswith(".json")):
        side = str(sidecar_path(out))
        if side not in done:
            done.add(side)
            also = [o for o in outputs if o != out and not o.endswith(".json") and str(sidecar_path(o)) == side]
            write_sidecar(out, record["step"], record.get("inputs", []), also=also, metadata_fields=fields)


def guarded(body: Callable[[], Any], *, run: str, step: str, inputs: Iterable[str | Path],
            outputs: Sequence[str | Path], continue_on_failure: bool) -> None:
    """Run one per-run step's ``body``, or leave failure records where it would leave artefacts.

    An input that is a failure record (an earlier step of the run failed) skips the step and
    passes the record on; without ``continue_on_failure`` that is an error naming the record. With
    ``continue_on_failure`` an error of ``body`` is logged and recorded instead of raised.
    """
    inputs = [str(p) for p in inputs]
    upstream = first(inputs)
    if upstream is not None:
        path, record = upstream
        if not continue_on_failure:
            raise InputError(path, f"is the failure record of run {record['run']}'s {record['failed_step']} step "
                                   f"({record['error']}), left while {OPTION} was true; set it again, or "
                                   "rerun that step (--forcerun) once its cause is fixed")
        log.warning("run %s: %s failed earlier (%s): no %s, its outputs are failure records",
                    run, record["failed_step"], record["error"], step)
        write(outputs, {**record, "step": step, "inputs": [path]})
        return
    if not continue_on_failure:
        body()
        return
    try:
        body()
    except Exception as exc:  # any error of this run's data: recorded, the other runs go on
        log.error("run %s: %s failed; %s is true, so its outputs are failure records:\n%s",
                  run, step, OPTION, traceback.format_exc())
        write(outputs, {"run": run, "step": step, "failed_step": step, "error": f"{type(exc).__name__}: {exc}",
                        "inputs": inputs})
