"""Resampling against a closed form (denoising: tests/test_denoise.py)."""

import os

import nibabel as nib
import numpy as np
import pytest

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
