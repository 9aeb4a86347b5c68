"""qc.continue_on_failure: a run whose per-run step fails leaves failure records, run QC lists it
with its error, and the group steps go on with the other runs; without the option the workflow
stops as for any failed job. The records themselves (fmriflow.failure) are checked first.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmriflow import failure
from fmriflow.errors import InputError


def _broken():
    raise InputError("confounds.tsv", "35 rows for 40 volumes")


def test_a_failed_step_leaves_records_that_no_reader_takes_for_data(tmp_path):
    outputs = [tmp_path / "sub-01_bold.nii.gz", tmp_path / "sub-01_relmat.tsv", tmp_path / "sub-01_relmat.npy"]
    failure.guarded(_broken, run="sub-01/func/sub-01_task-rest", step="denoise", inputs=[],
                    outputs=outputs, continue_on_failure=True)
    for out in outputs:
        record = failure.read(out)
        assert record["failed_step"] == "denoise" and "35 rows for 40 volumes" in record["error"]
    with pytest.raises(gzip.BadGzipFile):  # what nibabel meets when it opens the BOLD
        gzip.open(outputs[0]).read()
    with pytest.raises(ValueError):
        np.load(outputs[2])
    sidecar = json.loads((tmp_path / "sub-01_relmat.json").read_text())  # TSV and NPY share one, as artefacts do
    assert sidecar["Status"] == "failed" and "35 rows" in sidecar["Error"]
    assert {o["path"] for o in sidecar["Provenance"]["Outputs"]} == {str(outputs[2])}
    assert failure.read(tmp_path / "missing.tsv") is None


def test_a_record_among_the_inputs_is_passed_on_or_refused(tmp_path):
    upstream = tmp_path / "qc.tsv"
    failure.guarded(_broken, run="r", step="preproc_derivatives", inputs=[], outputs=[upstream],
                    continue_on_failure=True)
    ran = []
    failure.guarded(lambda: ran.append(1), run="r", step="resample", inputs=[upstream],
                    outputs=[tmp_path / "bold.nii.gz"], continue_on_failure=True)
    record = failure.read(tmp_path / "bold.nii.gz")
    assert not ran and record["failed_step"] == "preproc_derivatives" and record["step"] == "resample"
    with pytest.raises(InputError, match="qc.tsv.*failure record of run r's preproc_derivatives step"):
        failure.guarded(lambda: ran.append(1), run="r", step="resample", inputs=[upstream],
                        outputs=[tmp_path / "other.nii.gz"], continue_on_failure=False)
    with pytest.raises(InputError, match="35 rows"):  # without the option an error is raised as before
        failure.guarded(_broken, run="r", step="denoise", inputs=[], outputs=[tmp_path / "x.tsv"],
                        continue_on_failure=False)
    assert not (tmp_path / "x.tsv").exists() and not ran


def test_run_qc_lists_a_failed_run_with_its_error_only_with_the_option(tmp_path):
    from fmriflow.io import read_tsv, write_tsv
    from fmriflow.steps import run_qc_step

    runs = ["sub-01/func/sub-01_task-rest", "sub-02/func/sub-02_task-rest"]
    qc, cov = [str(tmp_path / f"qc{k}.tsv") for k in (1, 2)], [str(tmp_path / f"cov{k}.tsv") for k in (1, 2)]
    write_tsv(qc[0], pd.DataFrame([{"run": runs[0], "subject": "01", "mean_fd": 0.1}]))
    write_tsv(cov[0], pd.DataFrame({"index": [1, 2], "coverage": [1.0, 0.9], "used": [True, True]}))
    failure.guarded(_broken, run=runs[1], step="denoise", inputs=[], outputs=[qc[1]], continue_on_failure=True)
    failure.guarded(lambda: None, run=runs[1], step="parcellate", inputs=[qc[1]], outputs=[cov[1]],
                    continue_on_failure=True)
    out = tmp_path / "desc-runs_qc.tsv"
    with pytest.raises(InputError, match="qc2.tsv.*failure record of run sub-02/func/sub-02_task-rest's denoise"):
        run_qc_step(runs, qc, cov, str(out), max_mean_fd=0.5)
    run_qc_step(runs, qc, cov, str(out), continue_on_failure=True, max_mean_fd=0.5)
    table = read_tsv(out, dtype={"run": str, "subject": str}).set_index("run")
    assert table.loc[runs[0], "included"] and table.loc[runs[0], "region_coverage"] == 1.0
    assert not table.loc[runs[1], "included"] and table.loc[runs[1], "subject"] == "02"
    assert table.loc[runs[1], "error"] == table.loc[runs[1], "exclusion_reasons"]
    assert table.loc[runs[1], "error"].startswith("failed at denoise: InputError: ") and "35 rows" in table.loc[runs[1], "error"]


# ---------------------------------------------------------------------------- through the real DAG

@pytest.fixture(scope="module")
def broken_demo(tmp_path_factory, atlas_dir):
    """A 4-subject demo (the generator balances groups) whose second subject's confounds table lacks its last 5 rows."""
    from test_workflow import make_demo

    base = tmp_path_factory.mktemp("failure")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=40, bold_res=4, seed=9)
    confounds = next((demo / "derivatives/fmriprep/sub-02/func").glob("*_desc-confounds_timeseries.tsv"))
    lines = confounds.read_text().splitlines(keepends=True)
    confounds.write_text("".join(lines[:-5]))
    return base, demo


@pytest.mark.integration
def test_group_steps_go_on_without_a_failed_subject_only_with_the_option(broken_demo):
    from test_caching import fc_targets, small_config, snakemake

    base, demo = broken_demo
    config = small_config(demo, base / "results")
    name = "space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation"
    runs = {s: Path(config["output_dir"]) / f"fmriflow/{s}/func/{s}_task-rest_{name}_relmat.tsv"
            for s in ("sub-01", "sub-02", "sub-03", "sub-04")}
    proc = snakemake(base, config, str(runs["sub-02"]))  # the broken run alone: its first step fails
    assert proc.returncode != 0  # as before: the failed job stops the workflow
    assert "35 rows for 40 volumes" in proc.stdout + proc.stderr
    config["qc"]["continue_on_failure"] = True
    proc = snakemake(base, config, *fc_targets(config))
    assert proc.returncode == 0, proc.stderr[-5000:]

    group = Path(config["output_dir"]) / "fmriflow/group"
    table = pd.read_csv(group / "desc-runs_qc.tsv", sep="\t", dtype={"run": str})
    failed = table.set_index("run").loc["sub-02/func/sub-02_task-rest"]
    assert str(failed["included"]) == "False"
    assert "preproc_derivatives" in failed["error"] and "35 rows for 40 volumes" in failed["error"]
    assert (table.loc[table["run"] != "sub-02/func/sub-02_task-rest", "error"].isna()).all()  # n/a: read as NaN

    assert failure.read(runs["sub-02"])["failed_step"] == "preproc_derivatives"  # passed on to the last step
    mean = pd.read_csv(group / f"{name}_desc-mean_relmat.tsv", sep="\t", index_col=0).to_numpy()
    fcs = np.stack([pd.read_csv(runs[s], sep="\t", index_col=0).to_numpy() for s in ("sub-01", "sub-03", "sub-04")])
    off = ~np.eye(mean.shape[0], dtype=bool) & np.isfinite(fcs).all(axis=0)
    with np.errstate(divide="ignore"):  # the diagonal's 1.0 (left out below)
        expected = np.tanh(np.arctanh(fcs).mean(axis=0))  # Fisher z mean of the three runs that worked
    assert off.sum() > 1000
    np.testing.assert_allclose(mean[off], expected[off], atol=1e-6)
    sources = json.loads((group / f"{name}_desc-mean_relmat.json").read_text())["Sources"]
    assert sorted(sources) == sorted(str(runs[s]) for s in ("sub-01", "sub-03", "sub-04"))
