"""preproc.mode lite through the real DAG, on a demo whose raw BOLD moves (``head_motion``).

Checked against the generator's ground truth: the motion parameters it applied, its
non-steady-state volumes, and its motion-free preprocessed BOLD on the template grid.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from fmriflow.io import read_tsv

pytestmark = pytest.mark.integration

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
N_TRS, N_DUMMY, HEAD_MOTION = 24, 2, 4.0


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, atlas_dir):
    from test_workflow import demo_config, make_demo, run_snakemake

    base = tmp_path_factory.mktemp("lite")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=N_TRS, bold_res=2, seed=31,
                     head_motion=HEAD_MOTION, dummy_volumes=N_DUMMY)
    results = base / "results"
    config = demo_config(demo, results, preproc={"mode": "lite", "lite": {"threads": 1}},
                         denoise={"strategy": "gsr_only", "fd_threshold": None})
    targets = [str(results / "fmriflow" / f"sub-0{s}" / "func" /
                   f"sub-0{s}_task-rest_space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_relmat.tsv")
               for s in (1, 2)]
    proc = run_snakemake(base, config, *targets)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return demo, results


def _lite(results, sub, tail):
    return results / "preproc-lite" / sub / "func" / f"{sub}_task-rest_{tail}"


@pytest.mark.parametrize("sub", ["sub-01", "sub-02"])
def test_motion_parameters_recovered(lite_run, sub):
    demo, results = lite_run
    confounds = read_tsv(_lite(results, sub, "desc-confounds_timeseries.tsv"))
    truth = read_tsv(demo / "ground_truth" / f"{sub}_desc-headmotion_timeseries.tsv")
    assert len(confounds) == len(truth) == N_TRS + N_DUMMY
    # non-steady-state volumes found and flagged one-hot, as fMRIPrep does
    flags = [c for c in confounds if c.startswith("non_steady_state_outlier")]
    assert [int(np.flatnonzero(confounds[c])[0]) for c in flags] == list(range(N_DUMMY))
    # parameters are relative to lite's reference volume: compare after removing each mean
    est = confounds[MOTION].to_numpy()[N_DUMMY:]
    true = truth[MOTION].to_numpy()[N_DUMMY:]
    est, true = est - est.mean(0), true - true.mean(0)
    for j, name in enumerate(MOTION):
        r = np.corrcoef(est[:, j], true[:, j])[0, 1]
        bound = 0.2 if j < 3 else 0.005  # mm, rad: 1/20 of a 4 mm voxel; 0.25 mm of arc at 50 mm
        assert r > 0.9 and np.abs(est[:, j] - true[:, j]).max() < bound, (name, r, np.abs(est[:, j] - true[:, j]).max())
    # framewise displacement from the recovered parameters (Power, 50 mm) tracks the true one
    fd_true = np.abs(np.diff(true[:, :3], axis=0)).sum(1) + 50 * np.abs(np.diff(true[:, 3:], axis=0)).sum(1)
    fd = confounds["framewise_displacement"].to_numpy()[N_DUMMY + 1:]
    assert np.median(np.abs(fd - fd_true)) < 0.1 and abs(fd.mean() / fd_true.mean() - 1) < 0.25
    if fd_true.max() > 1.0:  # a motion spike: found at the same volume
        assert np.argmax(fd) == np.argmax(fd_true)


@pytest.mark.parametrize("sub", ["sub-01", "sub-02"])
def test_registered_to_the_template(lite_run, sub, a424_img):
    """The registered mean BOLD lies where the template's brain is, and matches the generator's truth.

    The reference for comparison is the raw mean taken as if it were already in MNI space
    (no registration): the generator put each head in a random pose (about 4 mm, 3 deg).
    The truth is compared at the raw data's resolution (both smoothed by a 2 mm Gaussian):
    at 2 mm the demo's BOLD is dominated by voxel-level detail that 4 mm data cannot carry.
    """
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_to_img
    from scipy.ndimage import gaussian_filter

    def on_grid(img, interpolation="linear"):
        return np.asarray(resample_to_img(img, a424_img, interpolation=interpolation, force_resample=True,
                                          copy_header=True).dataobj)

    def dice(image, mask):
        inside = image > 0.5 * np.percentile(image[image > 0], 95)
        return 2 * (inside & mask).sum() / (inside.sum() + mask.sum())

    demo, results = lite_run
    boldref = nib.load(_lite(results, sub, "space-MNI152NLin2009aSym_res-2_boldref.nii.gz"))
    mask = np.asarray(nib.load(_lite(results, sub, "space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz")).dataobj) > 0
    assert boldref.shape == a424_img.shape and np.allclose(boldref.affine, a424_img.affine)
    ours = np.asarray(boldref.dataobj)
    raw = nib.load(demo / "bids" / sub / "func" / f"{sub}_task-rest_bold.nii.gz")
    unregistered = on_grid(nib.Nifti1Image(np.asarray(raw.dataobj, dtype=np.float32)[..., N_DUMMY:].mean(axis=3), raw.affine))

    template_brain = on_grid(load_mni152_brain_mask(resolution=2), "nearest") > 0
    d_registered, d_unregistered = dice(ours, template_brain), dice(unregistered, template_brain)
    assert d_registered > 0.97 and d_registered > d_unregistered + 0.05, (d_registered, d_unregistered)
    assert mask.sum() > 0.95 * template_brain.sum()

    truth = nib.load(demo / "derivatives" / "fmriprep" / sub / "func" /
                     f"{sub}_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz")
    true_mean = gaussian_filter(np.asarray(truth.dataobj).mean(axis=3), 1.0)
    r_registered = np.corrcoef(gaussian_filter(ours, 1.0)[mask], true_mean[mask])[0, 1]
    r_unregistered = np.corrcoef(gaussian_filter(unregistered, 1.0)[mask], true_mean[mask])[0, 1]
    assert r_registered > 0.9 and r_registered > r_unregistered + 0.3, (r_registered, r_unregistered)


def test_chain_ran_and_sidecars_say_lite(lite_run):
    demo, results = lite_run
    sidecar = json.loads(_lite(results, "sub-01", "space-MNI152NLin2009aSym_res-2_desc-preproc_bold.json").read_text())
    assert sidecar["Preprocessing"] == "fmriflow lite" and sidecar["RepetitionTime"] == 2.0
    params = sidecar["Provenance"]["Parameters"]
    assert params["NonSteadyStateVolumes"] == N_DUMMY and params["Registration"]["Transform"] == "Affine"
    confounds_meta = json.loads(_lite(results, "sub-01", "desc-confounds_timeseries.json").read_text())
    assert sorted({v["Mask"] for k, v in confounds_meta.items() if k.startswith("a_comp_cor")}) == ["CSF", "WM"]
    # on the atlas grid already: the resample step links it and records the template it assumed
    resampled = results / "fmriflow" / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.json"
    info = json.loads(resampled.read_text())["Provenance"]["Parameters"]
    assert info["resampled"] is False and info["SourceSpace"] == "MNI152NLin2009aSym"
    assert "MNI152NLin6Asym" in info["Transform"]
    # each run's job log shows the two long loops' progress, in volumes, ending with all of them
    logs = sorted(results.rglob("preproc_lite/**/*.log"))
    assert len(logs) == 2, logs
    n = N_TRS + N_DUMMY
    for log in logs:
        lines = log.read_text().splitlines()
        for loop in ("lite: head motion", "lite: resampling"):
            assert f"| {n}/{n} [" in [line for line in lines if line.startswith(loop)][-1], (log, lines)
    denoised = json.loads((resampled.parent / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-denoised_bold.json").read_text())
    assert denoised["Provenance"]["Parameters"]["DummyVolumes"] == N_DUMMY
    assert denoised["Provenance"]["Parameters"]["NumberOfVolumesOut"] == N_TRS
    for sub in ("sub-01", "sub-02"):
        fc = read_tsv(results / "fmriflow" / sub / "func" /
                      f"{sub}_task-rest_space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_relmat.tsv", index_col=0)
        assert fc.shape == (424, 424) and np.isfinite(fc.to_numpy()).sum() > 300**2


def test_rerun_gives_the_same_bytes(lite_run, tmp_path):
    """Preprocessing sub-01 again, outside the DAG, with the DAG's settings (Affine, seed 0, one
    thread) writes the same files: ANTs' registration is seeded (a seed of 0 used to mean the
    clock to ANTs, so every run differed)."""
    from fmriflow.preproc import PreprocFiles
    from fmriflow.preproc.lite import preprocess_run

    demo, results = lite_run
    grid = results / "fmriflow" / "atlases" / "atlas-A424" / "atlas-A424_space-MNI152NLin6Asym_res-2_dseg.nii.gz"
    # fMRIPrep-shaped names: the boldref is named after the BOLD (_desc-preproc_bold -> _boldref)
    again = PreprocFiles(tmp_path / "run_desc-preproc_bold.nii.gz", tmp_path / "run_desc-brain_mask.nii.gz",
                         tmp_path / "run_desc-confounds_timeseries.tsv")
    preprocess_run(demo / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz", grid, again,
                   transform="Affine", seed=0, threads=1)
    first = _lite(results, "sub-01", "desc-confounds_timeseries.tsv")
    assert again.confounds.read_bytes() == first.read_bytes()
    dag_bold = _lite(results, "sub-01", "space-MNI152NLin2009aSym_res-2_desc-preproc_bold.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(again.bold).dataobj), np.asarray(nib.load(dag_bold).dataobj))
