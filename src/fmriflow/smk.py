"""Glue for the Snakemake scripts: send a step's messages and warnings to its log."""

from __future__ import annotations

import contextlib
import json
import re
import logging
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def logged(log_path: str) -> Iterator[logging.Logger]:
    """Route stdout, stderr, warnings and logging of the block to ``log_path``.

    A failure is written to the log with its traceback and re-raised, so Snakemake
    marks the job failed and removes its outputs.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            yield logging.getLogger("fmriflow")
        except Exception:
            traceback.print_exc(file=fh)
            fh.flush()
            print(f"fmriflow: step failed, see {log_path}", file=sys.__stderr__)
            raise
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)


class Shaped(Mapping):
    """Config entries a rule's script reads (``params.config``), kept out of Snakemake's params record.

    Snakemake records the ``repr`` of each built-in param and, when a record differs, prints the
    old and the new value in the job's reason: a whole config section (or the whole config) for a
    one-key change. An object of this class is not a built-in, so Snakemake leaves it out; the
    rule tracks the same entries through ``tracked_params``, one short param per leaf.
    """

    def __init__(self, entries: dict[str, Any]):
        self._entries = entries

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Shaped({self._entries!r})"


def leaves(entries: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested mapping; lists and empty mappings are leaves."""
    for key, value in entries.items():
        if isinstance(value, Mapping) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def tracked_params(entries: Mapping[str, Any]) -> dict[str, Any]:
    """Rule params that make Snakemake rerun a job when an entry changes, naming only that entry.

    ``{"config": Shaped(entries), "_shape0": "denoise.high_pass=0.01", ...}``: the reason of a rerun
    then reads "before: 'denoise.high_pass=0.01' now: 'denoise.high_pass=0.02'".
    """
    params: dict[str, Any] = {"config": Shaped(entries)}
    for index, (key, value) in enumerate(sorted(leaves(entries))):
        params[f"_shape{index}"] = f"{key}={_no_wildcards(json.dumps(value, sort_keys=True, default=str))}"
    return params


def per_run(snakemake: Any, body: Any) -> None:
    """Run a per-run step's ``body`` under the rule's failure policy (``params.on_failure``).

    With ``qc.continue_on_failure`` a failure leaves records instead of artefacts and an earlier
    step's record is passed on (``fmriflow.failure``); without it, as before, the job fails.
    """
    from .failure import guarded

    guarded(body, run=snakemake.wildcards.run, step=snakemake.rule, inputs=list(snakemake.input),
            outputs=list(snakemake.output), continue_on_failure=snakemake.params.on_failure["continue_on_failure"])


def _no_wildcards(text: str) -> str:
    """JSON ``text`` in which no ``{name}`` is left for Snakemake to fill as a wildcard.

    Snakemake fills wildcards into string params and has no escape for braces there; a config
    string such as a text template ("age: {age}") would stop the plan. Such a brace is written
    as JSON's unicode escape of the brace (the same string once decoded). Outside strings a
    JSON brace is never followed by a word character, so only string content changes.
    """
    return re.sub(r"\{(?=\s*\w)", r"\\u007b", text)


def check_scripts_once() -> None:
    """Check each ``script:`` rule's script once per plan, not once per job.

    Snakemake 9 checks, for every job of a ``script:`` rule, that the rule's script can be read
    (``snakemake.dag.ScriptProcessor``: the path formatted with the job's wildcards and params,
    parsed, and looked up in the source cache three times). At thousands of runs that is about a
    tenth of a dry run, and the answer is the same for every job of a rule whose script path
    names no wildcard or param, as all of fmriflow's do. Such a rule is checked at its first
    job; a path with ``{...}`` is still checked per job. A missing script still stops the plan
    with Snakemake's own error. Where Snakemake has no such processor, nothing changes.
    """
    try:
        import snakemake.api  # noqa: F401 (loads snakemake.dag and what it imports back, in order)
        from snakemake.dag import ScriptProcessor
    except ImportError:  # another Snakemake: its own checks, unchanged
        return
    per_job = ScriptProcessor.process_job
    if getattr(per_job, "once_per_rule", False):
        return

    def process_job(self: Any, job: Any) -> None:
        entry = getattr(job.rule, self.script_type, None) if getattr(job, f"is_{self.script_type}", False) else None
        if entry is None or "{" in str(entry):
            per_job(self, job)
            return
        checked = self.__dict__.setdefault("_rules_checked", set())
        if job.rule.name not in checked:
            per_job(self, job)  # raises when the script cannot be read
            checked.add(job.rule.name)

    process_job.once_per_rule = True  # type: ignore[attr-defined]
    ScriptProcessor.process_job = process_job


def fewer_collections(threshold: int = 100_000) -> None:
    """Let Python's cyclic garbage collector run less often in the process that plans the DAG.

    Planning allocates millions of small objects (jobs, files, wildcards) that live until the
    plan is made and form few reference cycles. At the interpreter's default (a young-generation
    collection every 700 net allocations, and with them ever longer scans of the older objects)
    the collector took about a sixth of a dry run's CPU at 1,000 subjects; a collection every
    ``threshold`` allocations cut that with the same peak memory (benchmarks/README.md). Only the
    processes that read the Snakefile (the plan, and each cluster job's own plan) are affected: a
    job's script runs in an interpreter of its own. A higher threshold already set is kept.
    """
    import gc

    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, threshold), middle, old)
