"""BrainSymphony in the workflow: the plan (dry runs on a 2-subject demo: off by default; on, one
connectome job per subject and one pretraining job; the configuration errors said at plan time), and
one run on an 8-subject demo, one subject without a connectome, to the variants table and the report:
the fMRI-only, SC-only and fused probe rows with their permuted controls, each pooled AUROC against
scikit-learn on the predictions, the connectome transform against its formula, and the report's
statement of the unimodal path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from test_workflow import demo_config, make_demo, planned_jobs, run_snakemake

pytestmark = pytest.mark.integration

NO_SC = "08"  # the run test's subject without a connectome


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("symphony_plan")
    return make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=23)  # connectomes included


def _config(demo, results, **symphony):
    sc = {"dir": str(demo / "derivatives" / "qsirecon"),
          "volumes": str(demo / "derivatives" / "qsirecon" / "seg-A424_desc-volume_regions.tsv")}
    return demo_config(demo, results, brainsymphony={"enabled": True, "sc": sc, **symphony})


def test_plan_off_and_on(demo, tmp_path):
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, tmp_path / "results"), "--dry-run"))
    assert "brainsymphony_pretrain" not in off and "sc_connectome" not in off
    on = planned_jobs(run_snakemake(tmp_path, _config(demo, tmp_path / "results"), "--dry-run"))
    assert on["sc_connectome"] == 2 and on["brainsymphony_pretrain"] == 1 and on["brainsymphony_probe"] == 1
    fmri = planned_jobs(run_snakemake(tmp_path, _config(demo, tmp_path / "results", modalities="fmri"), "--dry-run"))
    assert fmri["brainsymphony_pretrain"] == 1 and "sc_connectome" not in fmri


def test_plan_time_errors_name_the_key(demo, tmp_path):
    (demo / "derivatives" / "qsirecon" / "sub-02").rename(tmp_path / "moved")
    try:
        proc = run_snakemake(tmp_path, _config(demo, tmp_path / "results"), "--dry-run")
    finally:
        (tmp_path / "moved").rename(demo / "derivatives" / "qsirecon" / "sub-02")
    assert proc.returncode == 0, proc.stderr[-3000:]  # a subject without a connectome: the fMRI-only path
    assert planned_jobs(proc)["sc_connectome"] == 1
    for sub in ("sub-01", "sub-02"):
        (demo / "derivatives" / "qsirecon" / sub).rename(tmp_path / sub)
    try:
        proc = run_snakemake(tmp_path, _config(demo, tmp_path / "results"), "--dry-run")
    finally:
        for sub in ("sub-01", "sub-02"):
            (tmp_path / sub).rename(demo / "derivatives" / "qsirecon" / sub)
    assert proc.returncode != 0
    assert "no connectome for any subject (['01', '02']); use brainsymphony.modalities: fmri" in proc.stdout + proc.stderr
    config = _config(demo, tmp_path / "results")
    config["brainsymphony"]["sc"]["volumes"] = None
    proc = run_snakemake(tmp_path, config, "--dry-run")
    assert proc.returncode != 0
    assert "log10_count_over_volume needs brainsymphony.sc.volumes" in proc.stdout + proc.stderr
    config = _config(demo, tmp_path / "results")
    config["brainsymphony"]["readout"] = "networks"
    proc = run_snakemake(tmp_path, config, "--dry-run")
    assert proc.returncode != 0
    assert "brainsymphony.readout networks needs brainsymphony.networks" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def symphony_run(tmp_path_factory, atlas_dir):
    """The DAG on 8 subjects (4 responders), sub-08 without a connectome: BrainSymphony (tiny, 4 steps)
    pretrained on both modalities, its probe rows in the agnostic set-up (2 folds, no deep variant)."""
    base = tmp_path_factory.mktemp("symphony_run")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=8, n_trs=60, seed=31)
    shutil.rmtree(demo / "derivatives" / "qsirecon" / f"sub-{NO_SC}")
    results = base / "results"
    config = _config(demo, results, max_steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, num_workers=0)
    config["finetune"].update(variants=[], setups=["agnostic"], attribution=False, permutations=2, bootstrap=50)
    proc = run_snakemake(base, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return demo, results


def _read(path):
    return pd.read_csv(path, sep="\t", dtype={"subject": str})


def test_probe_rows_in_the_variants_table(symphony_run):
    _, results = symphony_run
    table = _read(results / "finetune" / "response" / "variants.tsv").set_index("variant")
    preds = _read(results / "finetune" / "response" / "setup-agnostic" / "predictions.tsv")
    for name, n in (("probe_symphony_fmri", 8), ("probe_symphony_sc", 7), ("probe_symphony_fused", 8)):
        for row in (name, f"permuted_{name}"):
            assert table.loc[row, "n_subjects"] == n  # the SC-only row leaves out the subject without SC
            rows = preds[preds["variant"] == row]
            assert table.loc[row, "auroc_pooled"] == pytest.approx(roc_auc_score(rows["label"], rows["score"]))
            assert table.loc[row, "auroc_ci_low"] <= table.loc[row, "auroc_pooled"] <= table.loc[row, "auroc_ci_high"]
    assert NO_SC not in set(preds.loc[preds["variant"] == "probe_symphony_sc", "subject"])
    # the same subject folds as the FC baselines
    for name in ("probe_symphony_fmri", "probe_symphony_fused"):
        ours = preds[preds["variant"] == name].set_index("subject")["fold"].sort_index()
        base = preds[preds["variant"] == "logistic"].set_index("subject")["fold"].sort_index()
        pd.testing.assert_series_equal(ours, base)


def test_connectome_transform_and_unimodal_path(symphony_run):
    demo, results = symphony_run
    sc_dir = next((results / "sc").glob("atlas-A424/transform-*"))
    assert sorted(p.name[:6] for p in sc_dir.glob("sub-*.tsv")) == [f"sub-{s:02d}" for s in range(1, 8)]
    counts = np.loadtxt(next((demo / "derivatives" / "qsirecon" / "sub-01" / "dwi").glob("*.csv")), delimiter=",")
    counts = counts + np.triu(counts, 1).T  # tck2connectome's upper triangle, mirrored
    volumes = _read(demo / "derivatives" / "qsirecon" / "seg-A424_desc-volume_regions.tsv")["volume_mm3"].to_numpy()
    with np.errstate(divide="ignore"):
        want = np.where(counts > 0, np.log10(counts / ((volumes[:, None] + volumes[None, :]) / 2)), 0.0)
    np.fill_diagonal(want, 0.0)
    ours = _read(next(sc_dir.glob("sub-01_*.tsv"))).to_numpy(dtype=float)
    np.testing.assert_allclose(ours, want, atol=1e-10)
    features = next((results / "brainsymphony").glob("*/features"))
    fmri, fused = np.load(features / "fmri.npy"), np.load(features / "fused.npy")
    subjects = _read(features / "subjects.tsv").set_index("subject")
    assert not subjects.loc[NO_SC, "connectome"] and subjects.loc[NO_SC, "path"] == "fmri only (no connectome)"
    assert subjects["gate_functional"].notna().sum() == 7
    gate = np.load(features / "gate.npy")
    no_sc = np.isnan(gate)
    assert no_sc.sum() == subjects.loc[NO_SC, "n_windows"]
    np.testing.assert_array_equal(fused[no_sc], fmri[no_sc])  # the fMRI-only path
    assert not np.allclose(fused[~no_sc], fmri[~no_sc])  # the gate mixed in the structural embedding


def test_report_states_the_unimodal_path(symphony_run):
    _, results = symphony_run
    html = (results / "report" / "fmriflow_report.html").read_text()
    assert "probe_symphony_fused" in html and "probe_symphony_sc" in html
    assert f"7 of 8 subjects have a structural connectome; 1 without one (sub-{NO_SC}) take the fMRI-only path" in html
    sidecar = json.loads((results / "finetune" / "response" / "setup-agnostic" / "symphony_subjects.json").read_text())
    assert sidecar["Provenance"]["Step"] == "finetune"
