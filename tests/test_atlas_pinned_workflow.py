"""Pinned atlases in the plan (dry runs on a 2-subject demo): none by default; asked for, one job per
atlas and no extra pass over the BOLD (the same parcellate jobs, each writing every atlas's series)."""

from __future__ import annotations

import pytest

from test_workflow import demo_config, make_demo, planned_jobs, run_snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("pinned_plan")
    return make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=29)


def test_plan_off_and_on(demo, tmp_path):
    results = tmp_path / "results"
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, results), "--dry-run"))
    assert "pinned_atlas" not in off
    pinned = {"pinned": ["TianS3", "Schaefer400N7TianS3"]}
    proc = run_snakemake(tmp_path, demo_config(demo, results, atlas=pinned), "--dry-run", "--printshellcmds")
    on = planned_jobs(proc)
    assert on["pinned_atlas"] == 2 and on["parcellate"] == off["parcellate"]
    assert on["atlas"] == off["atlas"] == 1
    text = proc.stdout
    for name in pinned["pinned"]:
        assert f"atlas-{name}_space-MNI152NLin6Asym_res-2_dseg.nii.gz" in text
        assert f"_atlas-{name}_stat-mean_timeseries.tsv" in text  # written by the parcellate jobs


def test_a_name_in_both_extra_and_pinned_is_refused(demo, tmp_path, atlas_dir):
    extra = {"TianS3": {"image": str(atlas_dir / "A424+2mm.nii.gz"), "labels": str(atlas_dir / "A424_Coordinates.dat")}}
    proc = run_snakemake(tmp_path, demo_config(demo, tmp_path / "results", atlas={"pinned": ["TianS3"], "extra": extra}),
                         "--dry-run")
    assert proc.returncode != 0 and "atlas.extra names ['TianS3'], which atlas.pinned names too" in proc.stdout + proc.stderr
