"""What keeps a plan of thousands of runs fast: group steps gathering runs through run file lists
instead of a checkpoint (fmriflow.runfiles), Snakemake's script check done once per rule and the
garbage collector's threshold while planning (fmriflow.smk).

Checksums are compared with hashlib's; the script check with a real Snakemake plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from fmriflow.errors import InputError
from fmriflow.io import write_tsv
from fmriflow.runfiles import included, list_step

RUNS = ["sub-01/func/sub-01_task-rest", "sub-02/func/sub-02_task-rest", "sub-10/func/sub-10_task-rest"]


def _files(tmp_path, role):
    paths = []
    for i, run in enumerate(RUNS):
        path = tmp_path / f"{run.split('/')[0]}_{role}.tsv"
        path.write_text(f"{role}\t{i}\n")
        paths.append(str(path))
    return paths


def _qc(tmp_path, included_runs):
    path = tmp_path / "qc.tsv"
    write_tsv(path, pd.DataFrame({"run": RUNS, "included": [r in included_runs for r in RUNS]}))
    return str(path)


def test_list_records_every_run_and_role_with_its_sha256(tmp_path):
    files = {"pearson_tsv": _files(tmp_path, "a"), "pearson_npy": _files(tmp_path, "b")}
    out = tmp_path / "list.tsv"
    list_step(RUNS, files, str(out))
    table = pd.read_csv(out, sep="\t", dtype=str)
    assert table["run"].tolist() == [r for r in RUNS for _ in range(2)]  # run order, roles within
    assert table["role"].tolist() == ["pearson_tsv", "pearson_npy"] * 3
    assert table["path"].tolist() == [os.path.relpath(files[role][i], tmp_path) for i in range(3)
                                      for role in ("pearson_tsv", "pearson_npy")]  # relative to the list's folder
    for row in table.itertuples():
        with open(tmp_path / row.path, "rb") as fh:
            assert row.sha256 == hashlib.sha256(fh.read()).hexdigest()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    recorded = {i["path"]: i["sha256"] for i in sidecar["Provenance"]["Inputs"]}
    assert recorded == {str(tmp_path / p): sha for p, sha in zip(table["path"], table["sha256"])}


def test_list_bytes_do_not_depend_on_where_the_outputs_are(tmp_path):
    lists = []
    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        (root / "group").mkdir(parents=True)
        paths = []
        for run in RUNS:
            path = root / f"{run}_x.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("same\n")
            paths.append(str(path))
        list_step(RUNS, {"x": paths}, str(root / "group" / "list.tsv"))
        lists.append((root / "group" / "list.tsv").read_bytes())
        runs, found = included(str(root / "group" / "list.tsv"), _qc(tmp_path, set(RUNS)), "x")
        assert found == paths
    assert lists[0] == lists[1]


def test_list_changes_when_a_file_changes(tmp_path):
    files = {"timeseries": _files(tmp_path, "t")}
    out = tmp_path / "list.tsv"
    list_step(RUNS, files, str(out))
    before = out.read_bytes()
    list_step(RUNS, files, str(out))
    assert out.read_bytes() == before  # same bytes in, same list out: no group step reruns
    with open(files["timeseries"][1], "a") as fh:
        fh.write("x\n")
    list_step(RUNS, files, str(out))
    assert out.read_bytes() != before


def test_group_step_reads_the_included_runs_in_list_order(tmp_path):
    files = {"pearson_tsv": _files(tmp_path, "a"), "pearson_npy": _files(tmp_path, "b")}
    list_step(RUNS, files, str(tmp_path / "list.tsv"))
    runs, paths = included(str(tmp_path / "list.tsv"), _qc(tmp_path, {RUNS[0], RUNS[2]}), "pearson_npy")
    assert runs == [RUNS[0], RUNS[2]]
    assert paths == [files["pearson_npy"][0], files["pearson_npy"][2]]


def test_stale_list_empty_cohort_and_unknown_role_are_errors_naming_the_files(tmp_path):
    listing = tmp_path / "list.tsv"
    list_step(RUNS[:2], {"timeseries": _files(tmp_path, "t")[:2]}, str(listing))
    qc = _qc(tmp_path, set(RUNS))
    with pytest.raises(InputError, match=rf"{listing}: names other runs than the QC table {qc}"):
        included(str(listing), qc, "timeseries")
    list_step(RUNS, {"timeseries": _files(tmp_path, "t")}, str(listing))
    with pytest.raises(InputError, match="lists no 'bold' files; it has \\['timeseries'\\]"):
        included(str(listing), qc, "bold")
    none = _qc(tmp_path, set())
    with pytest.raises(InputError, match=f"{none}: QC excluded every run"):
        included(str(listing), none, "timeseries")
    with pytest.raises(InputError, match="role 'x' has 2 files for 3 runs"):
        list_step(RUNS, {"x": ["a", "b"]}, str(tmp_path / "bad.tsv"))


def test_script_rules_are_checked_once_and_templated_ones_per_job(monkeypatch):
    import snakemake.api  # noqa: F401 (loads snakemake.dag and what it imports back, in order)
    from snakemake.dag import ScriptProcessor

    from fmriflow import smk

    seen = []
    monkeypatch.setattr(ScriptProcessor, "process_job", lambda self, job: seen.append(job.name))
    smk.check_scripts_once()
    smk.check_scripts_once()  # a second workflow read in one process wraps nothing twice
    processor = ScriptProcessor.__new__(ScriptProcessor)
    fixed = SimpleNamespace(name="denoise", script="../scripts/denoise.py")
    templated = SimpleNamespace(name="tool", script="../scripts/{wildcards.tool}.py")
    jobs = [SimpleNamespace(rule=fixed, is_script=True, name=f"denoise{i}") for i in range(3)]
    jobs += [SimpleNamespace(rule=templated, is_script=True, name=f"tool{i}") for i in range(2)]
    jobs += [SimpleNamespace(rule=SimpleNamespace(name="sh", script=None), is_script=False, name="sh0")]
    for job in jobs:
        ScriptProcessor.process_job(processor, job)
    assert seen == ["denoise0", "tool0", "tool1", "sh0"]


SNAKEFILE = """
from fmriflow import smk
smk.check_scripts_once()

rule all:
    input: expand("out/{i}.txt", i=range(3))

rule make:
    output: "out/{i}.txt"
    script: "make.py"
"""


@pytest.mark.parametrize("present", [True, False], ids=["script present", "script missing"])
def test_a_missing_script_still_stops_the_plan(tmp_path, present):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    if present:
        (tmp_path / "make.py").write_text("open(snakemake.output[0], 'w').close()\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    if present:
        assert proc.returncode == 0, text[-3000:]
    else:
        # Snakemake 9.27's own error (its "not accessible" message comes after a FileNotFoundError naming the file)
        assert proc.returncode != 0 and f"No such file or directory: '{tmp_path / 'make.py'}'" in text, text[-3000:]


def test_fewer_collections_raises_the_young_threshold_and_keeps_a_higher_one():
    import gc

    from fmriflow import smk

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        smk.fewer_collections(50_000)
        assert gc.get_threshold() == (50_000, 10, 10)
        gc.set_threshold(200_000, 5, 5)
        smk.fewer_collections(50_000)
        assert gc.get_threshold() == (200_000, 5, 5)
    finally:
        gc.set_threshold(*saved)
