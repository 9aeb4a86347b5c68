"""Resampling against a closed form; denoising against an explicit least-squares fit."""

import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmriflow.denoise import denoise_run
from fmriflow.errors import InputError
from fmriflow.resample import to_atlas_grid


def _linear_image(affine, shape, n_t=3):
    """Each volume t holds f(x, y, z) = x + 2y - z + 10 t in world mm: trilinear-exact."""
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).T
    base = (xyz[:, 0] + 2 * xyz[:, 1] - xyz[:, 2]).reshape(shape)
    data = np.stack([base + 10 * t for t in range(n_t)], axis=-1).astype(np.float32)
    return nib.Nifti1Image(data, affine)


def test_same_grid_is_a_link(a424_img, tmp_path):
    bold = tmp_path / "bold.nii.gz"
    mask = tmp_path / "mask.nii.gz"
    nib.save(_linear_image(a424_img.affine, a424_img.shape), bold)
    nib.save(nib.Nifti1Image(np.ones(a424_img.shape, np.uint8), a424_img.affine), mask)
    info = to_atlas_grid(bold, mask, tmp_path / "atlas.nii.gz" if False else _save(a424_img, tmp_path), tmp_path / "o/b.nii.gz", tmp_path / "o/m.nii.gz")
    assert info["resampled"] is False
    assert os.path.islink(tmp_path / "o/b.nii.gz")
    assert (tmp_path / "o/b.nii.gz").read_bytes() == bold.read_bytes()


def _save(img, folder):
    path = folder / "atlas.nii.gz"
    nib.save(img, path)
    return path


def test_coarser_grid_is_resampled_exactly_for_linear_signal(a424_img, tmp_path):
    affine4 = np.diag([-4.0, 4.0, 4.0, 1.0])
    affine4[:3, 3] = a424_img.affine[:3, 3]
    shape4 = (46, 55, 46)
    bold, mask = tmp_path / "b4.nii.gz", tmp_path / "m4.nii.gz"
    nib.save(_linear_image(affine4, shape4), bold)
    nib.save(nib.Nifti1Image(np.ones(shape4, np.uint8), affine4), mask)
    info = to_atlas_grid(bold, mask, _save(a424_img, tmp_path), tmp_path / "b2.nii.gz", tmp_path / "m2.nii.gz")
    assert info["resampled"] is True
    out = nib.load(tmp_path / "b2.nii.gz")
    assert out.shape == (*a424_img.shape, 3) and np.allclose(out.affine, a424_img.affine)
    expected = np.asarray(_linear_image(a424_img.affine, a424_img.shape).dataobj)
    inner = (slice(10, 80), slice(10, 98), slice(10, 80))
    np.testing.assert_allclose(np.asarray(out.dataobj)[inner], expected[inner], atol=1e-2)
    assert nib.load(tmp_path / "m2.nii.gz").get_data_dtype() == np.uint8


def test_non_template_bold_rejected(a424_img, tmp_path):
    far = np.diag([2.0, 2.0, 2.0, 1.0])
    far[:3, 3] = [5000, 5000, 5000]
    bold, mask = tmp_path / "far.nii.gz", tmp_path / "farmask.nii.gz"
    nib.save(_linear_image(far, (10, 10, 10)), bold)
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), far), mask)
    with pytest.raises(InputError, match="far.nii.gz: BOLD does not overlap"):
        to_atlas_grid(bold, mask, _save(a424_img, tmp_path), tmp_path / "x.nii.gz", tmp_path / "y.nii.gz")


MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def _fmriprep_run(root, n_t=80, shape=(6, 5, 4), seed=0):
    """A tiny fMRIPrep-shaped run whose voxels are signal + a known mix of confounds."""
    rng = np.random.default_rng(seed)
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    columns = {}
    for name in MOTION + ["csf", "white_matter"]:
        base = np.cumsum(rng.standard_normal(n_t)) * 0.1
        columns[name] = base
        if name in MOTION:
            deriv = np.r_[np.nan, np.diff(base)]
            columns[f"{name}_derivative1"] = deriv
            columns[f"{name}_power2"] = base**2
            columns[f"{name}_derivative1_power2"] = deriv**2
    t = np.arange(n_t)
    columns["cosine00"] = np.cos(np.pi * (t + 0.5) / n_t)
    columns["framewise_displacement"] = np.r_[np.nan, np.abs(rng.standard_normal(n_t - 1)) * 0.1]
    confounds = pd.DataFrame(columns)
    confounds.to_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    (func / "sub-01_task-rest_desc-confounds_timeseries.json").write_text("{}")
    n_vox = int(np.prod(shape))
    signal = rng.standard_normal((n_t, n_vox))
    mix = rng.standard_normal((confounds.shape[1], n_vox))
    data = 500 + signal + np.nan_to_num(confounds.to_numpy()) @ mix
    img = nib.Nifti1Image(data.T.reshape(*shape, n_t).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    bold = func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
    nib.save(img, bold)
    mask = func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), img.affine), mask)
    return bold, mask, confounds, data


def test_simple_strategy_equals_least_squares(tmp_path):
    bold, mask, confounds, data = _fmriprep_run(tmp_path / "fmriprep")
    out = tmp_path / "denoised_bold.nii.gz"
    info = denoise_run(bold, mask, bold, out, strategy="simple")
    # nilearn's "simple": 24 motion regressors, csf + white_matter, cosine drift terms.
    chosen = [c for c in confounds.columns if c != "framewise_displacement"]
    assert sorted(info["ConfoundRegressors"]) == sorted(chosen)
    conf = confounds[chosen].to_numpy().copy()
    first = np.isnan(conf[0])
    conf[0, first] = conf[1, first]  # nilearn copies the second row into the undefined first one
    t = np.arange(len(conf))
    design = np.column_stack([np.ones_like(t), t, conf])
    beta, *_ = np.linalg.lstsq(design, data, rcond=None)
    expected = data - design @ beta
    got = np.asarray(nib.load(out).dataobj).reshape(-1, len(conf)).T
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert info["NumberOfVolumesKept"] == len(conf)


def test_row_count_mismatch_names_files(tmp_path):
    bold, mask, confounds, _ = _fmriprep_run(tmp_path / "fmriprep")
    path = bold.parent / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    confounds.iloc[:-5].to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError, match="75 confound rows for 80 volumes"):
        denoise_run(bold, mask, bold, tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()
