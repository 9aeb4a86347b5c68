"""The voxel rules in the real Snakemake DAG on a tiny demo: datasets on both grids checked against a
z-score computed here from the resampled BOLD, splits shared with the region dataset, NeuroSTORM
pretraining then prompt tuning (encoder unchanged), BrainMT training, GPU launch, off by default."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_workflow import demo_config, job_resources, make_demo, run_snakemake

from fmriflow.datasets.regions import read_splits
from fmriflow.datasets.voxels import load_card, read_runs

pytestmark = pytest.mark.integration

SMALL = {"window": 2, "stride": 6, "batch_size": 2, "max_steps": 2, "lr": 1e-3}


def voxel_config(demo, results, **voxel):
    config = demo_config(demo, results)
    # run QC off: 20-volume runs leave too few degrees of freedom, and this test follows all four
    # runs (the voxel dataset takes the QC-passed runs, as the region dataset does)
    config["qc"] = {"max_mean_fd": None, "max_fraction_censored": None, "min_degrees_of_freedom": None,
                    "min_region_coverage": None}
    # small memory requests: the local profile's 8 GB then fits two jobs at a time; the demo's
    # voxel.target (config/demo.yaml) kept
    config["voxel"] = {**config["voxel"], "enabled": True, "warmup_steps": 1, "checkpoint_every": 1, "num_workers": 0,
                       "mem_mb": 2000, "dataset_mem_mb": 2000,
                       "pretrain": SMALL, "brainmt": SMALL, "neurostorm": {**SMALL, "prompt_len": 2}, **voxel}
    return config


@pytest.fixture(scope="module")
def voxel_run(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("vwf")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=20, seed=21)  # on the grid: no resampling
    results = base / "results"
    config = voxel_config(demo, results)
    targets = [str(results / "voxel" / f"{m}_target-response" / "model.pt") for m in ("brainmt", "neurostorm")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # toy models: a second thread per job only adds hand-offs
        proc = run_snakemake(base, config, *targets)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return demo, results, base, config


def zscored(bold, mask) -> np.ndarray:
    """(T, X, Y, Z): z-score over in-mask voxels of all frames, background at the smallest in-mask value."""
    data, inside = nib.load(bold).get_fdata(), nib.load(mask).get_fdata() > 0
    values = data[inside]
    z = (data - values.mean()) / values.std()
    z[~inside] = (values.min() - values.mean()) / values.std()
    return np.moveaxis(z, -1, 0)


def test_datasets_on_both_grids_with_the_region_splits(voxel_run):
    _, results, _, _ = voxel_run
    region_splits = read_splits(results / "dataset" / "atlas-A424")
    first = {}
    for geometry, shape in (("91x109x91", (91, 109, 91)), ("96x96x96", (96, 96, 96))):
        root = results / "dataset" / f"voxel-{geometry}"
        card = load_card(root)
        assert tuple(card["shape"]) == shape and card["dtype"] == "float16" and card["n_runs"] == 4
        pd.testing.assert_frame_equal(read_splits(root), region_splits)
        row = read_runs(root).iloc[0]
        first[geometry] = np.load(root / "frames.npy", mmap_mode="r")[row["first_frame"]:row["first_frame"] + row["n_frames"]]
    key = row["run"]
    stem = results / "fmriflow" / f"{key}_space-MNI152NLin6Asym_res-2"
    expected = zscored(f"{stem}_desc-preproc_bold.nii.gz", f"{stem}_desc-brain_mask.nii.gz")
    np.testing.assert_allclose(first["91x109x91"], expected, rtol=1e-3, atol=1e-3)  # float16
    # 96^3: x and z padded by 2 (+3 at the end), y cropped by 6 (+7)
    np.testing.assert_allclose(first["96x96x96"][:, 2:93, :, 2:93], expected[:, :, 6:102, :], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(first["96x96x96"][:, :2], expected.min(), rtol=1e-3)


def test_pretraining_prompt_tuning_and_brainmt_ran(voxel_run):
    _, results, _, _ = voxel_run
    runs = {name: results / "voxel" / name for name in ("neurostorm-mae", "neurostorm_target-response", "brainmt_target-response")}
    for folder in runs.values():
        assert pd.read_csv(folder / "metrics.csv")["step"].max() == 2
    states = {name: torch.load(folder / "model.pt", weights_only=False) for name, folder in runs.items()}
    assert {s["mamba_backend"] for s in states.values()} == {"reference"}
    assert states["brainmt_target-response"]["classes"] == ["0", "1"]
    encoder = states["neurostorm-mae"]["model"]
    tuned = states["neurostorm_target-response"]["model"]
    frozen = [k for k in tuned if k.startswith("backbone.") and not k.endswith(".prompt")]
    assert frozen
    for key in frozen:
        assert torch.equal(tuned[key], encoder["encoder." + key.removeprefix("backbone.")]), key


def test_gpu_settings_launch_torchrun_with_gpu_resources(voxel_run):
    demo, results, base, _ = voxel_run
    config = voxel_config(demo, results, gpus=2, gpu_model="h100", cpus_per_gpu=4, grad_checkpoint=True)
    target = str(results / "voxel" / "neurostorm-mae" / "model.pt")
    proc = run_snakemake(base, config, "--dry-run", "--printshellcmds", "--forcerun", "voxel_pretrain", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "-m torch.distributed.run --standalone --nproc-per-node 2 -m fmriflow.train" in out
    assert "--task neurostorm-mae" in out and "--grad-checkpoint" in out
    resources = job_resources(out, "voxel_pretrain")
    for item in ("gpu=2", "gpu_model=h100", "cpus_per_gpu=4", "runtime=240"):
        assert item in resources, resources


def test_voxel_rules_are_off_by_default(voxel_run):
    demo, results, base, _ = voxel_run
    proc = run_snakemake(base, demo_config(demo, results), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "voxel_" not in proc.stdout and "rule pretrain" in proc.stdout
