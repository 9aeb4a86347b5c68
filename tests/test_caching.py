"""Caching and resumption through real Snakemake runs of a small demo.

A config change reruns exactly the steps it shapes (rules pass config to their scripts as
``params``, which Snakemake compares with what made each output), and a run killed in the
middle (SIGTERM or SIGKILL, jobs included) resumes to artefacts byte-identical to an
uninterrupted run's.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, demo_config, make_demo

pytestmark = pytest.mark.integration

# every step up to connectivity and run QC: the steps a downstream config change must leave alone
UPSTREAM = {"bids", "atlas", "preproc_derivatives", "resample", "denoise", "parcellate", "connectivity",
            "run_qc", "run_files", "group_connectivity", "connectivity_stack"}


def snakemake(workdir: Path, config: dict, *extra: str, wait: bool = True, directory: Path = REPO):
    """Run the repository's workflow with ``config``; ``directory`` holds its .snakemake state."""
    cfg = workdir / f"config-{time.monotonic_ns()}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile",
           str(REPO / "profiles/local"), "--cores", "2", "--configfile", str(cfg), "--directory", str(directory), *extra]
    if not wait:  # its own process group, so that a signal reaches its jobs too
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


def planned_jobs(workdir: Path, config: dict, *targets: str, directory: Path = REPO) -> dict[str, int]:
    """Rule -> job count of a dry run (its "Job stats" table); ``directory`` holds the .snakemake state."""
    proc = snakemake(workdir, config, "--dry-run", *targets, directory=directory)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text[text.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def params_changed(workdir: Path, config: dict) -> dict[str, str]:
    """Output -> rule, for outputs whose recorded params differ from ``config``'s (``--summary``).

    Not ``--list-changes params``: Snakemake 9.27 lists every output with recorded params there,
    changed or not (its ParamsChange yields its files even when it holds no change).
    """
    proc = snakemake(workdir, config, "--summary")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("/")]
    return {row[0]: row[2] for row in rows if row[4] == "params changed"}


def data_digests(results: Path) -> dict[str, str]:
    """sha256 of every data artefact under its final name (not the sidecars: they record paths
    and times; not a killed writer's hidden ``.<name>.*.tmp`` file, which no step reads)."""
    return {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((results / "fmriflow").rglob("*"))
            if p.is_file() and p.suffix != ".json" and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("caching")
    return base, make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=60, seed=5)


def small_config(demo_dir: Path, results: Path) -> dict:
    # QC off: every run goes on, whatever the synthetic motion
    return demo_config(demo_dir, results, qc={"max_mean_fd": None, "max_fraction_censored": None,
                                              "min_degrees_of_freedom": None, "min_region_coverage": None})


def fc_targets(config: dict) -> list[str]:
    """Every run's Pearson FC, the QC table, the group FC and the lists of every run's matrices and time
    series (fmriflow.runfiles; the second is the dataset's input): all of UPSTREAM, nothing after."""
    from fmriflow.connectivity import STAT

    out = Path(config["output_dir"]) / "fmriflow"
    name = f"space-MNI152NLin6Asym_res-2_atlas-A424_stat-{STAT['pearson']}"
    # per run too, named: the tests count each run's jobs
    runs = [bold.relative_to(config["bids_dir"]).as_posix().removesuffix("_bold.nii.gz")
            for bold in sorted(Path(config["bids_dir"]).glob("sub-*/func/*_bold.nii.gz"))]
    lists = [str(out / f"group/space-MNI152NLin6Asym_res-2_atlas-A424_desc-{what}_files.tsv")
             for what in ("relmat", "timeseries")]
    return [*(str(out / f"{run}_{name}_relmat.tsv") for run in runs), str(out / "group/desc-runs_qc.tsv"),
            str(out / f"group/{name}_desc-mean_relmat.tsv"), str(out / f"group/{name}_desc-stack_relmat.npy"), *lists]


@pytest.fixture(scope="module")
def finished(demo):
    """The upstream part of the DAG, run to the end once."""
    base, demo_dir = demo
    config = small_config(demo_dir, base / "results")
    proc = snakemake(base, config, *fc_targets(config))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return base, config


def test_finished_run_has_nothing_to_do(finished):
    base, config = finished
    assert planned_jobs(base, config, *fc_targets(config)) == {}


@pytest.mark.parametrize("change", [
    {"finetune": {"max_epochs": 7, "mem_mb": 9000, "setups": ["agnostic"]}},
    {"report": {"ground_truth": None}},
    {"pretrain": {"lr": 1e-3}, "dataset": {"seed": 4}},
    {"atlas": {"cache_dir": "resources/elsewhere"}},  # where the atlas is cached does not shape it
])
def test_downstream_change_leaves_upstream_alone(finished, change):
    base, config = finished
    changed = copy.deepcopy(config)
    for section, keys in change.items():
        changed.setdefault(section, {}).update(keys)
    jobs = planned_jobs(base, changed)  # the whole DAG: pretraining, fine-tuning, report are still to do
    assert jobs, "the dry run planned nothing: the downstream steps were expected"
    assert not UPSTREAM & set(jobs), f"upstream steps would rerun: {jobs}"
    assert set(params_changed(base, changed).values()) <= {"dataset_description"}  # its hash covers all config


def test_denoise_change_reruns_denoise_and_after(finished):
    base, config = finished
    changed = copy.deepcopy(config)
    changed["denoise"]["high_pass"] = 0.02
    jobs = planned_jobs(base, changed, *fc_targets(changed))
    n_runs = 2
    assert jobs.get("denoise") == n_runs and jobs.get("parcellate") == n_runs and jobs.get("connectivity") == n_runs
    assert jobs.get("run_qc") == 1
    assert not {"bids", "atlas", "preproc_derivatives", "resample"} & set(jobs), jobs
    listed = params_changed(base, changed)
    assert set(listed.values()) == {"denoise"} and len(listed) == 2 * n_runs, listed  # BOLD + QC row per run
    # the reason names the changed entry only, not the whole section (nor the whole config)
    dry = snakemake(base, changed, "--dry-run", *fc_targets(changed))
    reasons = [line for line in (dry.stdout + dry.stderr).splitlines() if "Params have changed" in line]
    assert len(reasons) == n_runs, reasons
    for line in reasons:
        assert "before: 'denoise.high_pass=0.01'" in line and "now: 'denoise.high_pass=0.02'" in line, line
        assert "low_pass" not in line and len(line) < 200, line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_identical_artefacts(finished, demo, sig):
    base, reference_config = finished
    reference = data_digests(Path(reference_config["output_dir"]))
    _, demo_dir = demo
    results = base / f"killed-{sig.name}"
    config = small_config(demo_dir, results)
    state = base / f"state-{sig.name}"  # its own .snakemake: the kill's lock and records stay there
    state.mkdir()

    proc = snakemake(base, config, *fc_targets(config), wait=False, directory=state)
    deadline = time.monotonic() + 600
    # kill while jobs run: the first denoised BOLD is out, the run is far from over
    while not list(results.glob("fmriflow/sub-*/func/*desc-denoised_bold.nii.gz")):
        assert proc.poll() is None, f"snakemake ended before the kill: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no denoised BOLD within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    if sig == signal.SIGKILL:  # the jobs were in the group too; let the kernel finish them
        time.sleep(1)
    before = data_digests(results)
    assert len(before) < len(reference), "the kill came after the run had finished"
    for name, digest in before.items():  # every file under a final name is complete
        assert digest == reference[name], f"{name}: differs from the uninterrupted run's"

    if sig == signal.SIGKILL:  # snakemake could not release its lock: the documented first step
        unlock = snakemake(base, config, "--unlock", directory=state)
        assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = snakemake(base, config, "--rerun-incomplete", *fc_targets(config), directory=state)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    after = data_digests(results)
    assert after == reference
    assert not list(results.rglob(".*.tmp*")), "a killed writer's temporary file outlived the rerun"
