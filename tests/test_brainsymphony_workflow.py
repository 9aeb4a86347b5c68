"""BrainSymphony in the workflow's plan (dry runs on a 2-subject demo): off by default; on, one
connectome job per subject and one pretraining job; the configuration errors said at plan time."""

from __future__ import annotations

import pytest

from fmriflow.sc.demo import write_demo_connectomes
from test_workflow import demo_config, make_demo, planned_jobs, run_snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("symphony_plan")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=23)
    write_demo_connectomes(demo / "derivatives" / "qsirecon", demo / "ground_truth" / "ground_truth.json", seed=23)
    return demo


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
    assert proc.returncode != 0
    assert "no connectome for subject(s) ['02']; use brainsymphony.modalities: fmri" in proc.stdout + proc.stderr
    config = _config(demo, tmp_path / "results")
    config["brainsymphony"]["sc"]["volumes"] = None
    proc = run_snakemake(tmp_path, config, "--dry-run")
    assert proc.returncode != 0
    assert "log10_count_over_volume needs brainsymphony.sc.volumes" in proc.stdout + proc.stderr
