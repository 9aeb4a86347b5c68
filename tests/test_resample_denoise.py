"""Resampling to the atlas grid against a closed form; space, affine and orientation checks.

(Denoising: tests/test_denoise.py.)
"""

import os

import nibabel as nib
import numpy as np
import pytest

from fmriflow.errors import InputError
from fmriflow.resample import to_atlas_grid


def _linear_image(affine, shape, n_t=3):
    """Each volume t holds f(x, y, z) = x + 2y - z + 10 t in world mm: interpolation-exact."""
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).T
    base = (xyz[:, 0] + 2 * xyz[:, 1] - xyz[:, 2]).reshape(shape)
    data = np.stack([base + 10 * t for t in range(n_t)], axis=-1).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


def _run(folder, affine, shape, space="MNI152NLin6Asym", res="2", img=None):
    """BOLD and mask named as fMRIPrep names them (the space entity is what the checks read)."""
    entities = f"space-{space}" + (f"_res-{res}" if res else "")
    folder.mkdir(parents=True, exist_ok=True)
    bold = folder / f"sub-01_task-rest_{entities}_desc-preproc_bold.nii.gz"
    mask = folder / f"sub-01_task-rest_{entities}_desc-brain_mask.nii.gz"
    nib.save(img if img is not None else _linear_image(affine, shape), bold)
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine), mask)
    return bold, mask


def _save(img, folder):
    path = folder / "atlas.nii.gz"
    nib.save(img, path)
    return path


def _outputs(tmp_path):
    return tmp_path / "o" / "b.nii.gz", tmp_path / "o" / "m.nii.gz"


def test_same_grid_is_a_link(a424_img, tmp_path):
    bold, mask = _run(tmp_path / "in", a424_img.affine, a424_img.shape)
    out_bold, out_mask = _outputs(tmp_path)
    info = to_atlas_grid(bold, mask, _save(a424_img, tmp_path), out_bold, out_mask)
    assert info["resampled"] is False and info["Transform"] == "identity" and info["SourceOrientation"] == "LAS"
    assert os.path.islink(out_bold)
    assert out_bold.read_bytes() == bold.read_bytes()


def _check_exact(out_bold, a424_img):
    out = nib.load(out_bold)
    assert out.shape == (*a424_img.shape, 3) and np.allclose(out.affine, a424_img.affine)
    expected = np.asarray(_linear_image(a424_img.affine, a424_img.shape).dataobj)
    inner = (slice(10, 80), slice(10, 98), slice(10, 80))
    np.testing.assert_allclose(np.asarray(out.dataobj)[inner], expected[inner], atol=1e-2)


def test_coarser_grid_is_resampled_exactly_for_linear_signal(a424_img, tmp_path):
    affine4 = np.diag([-4.0, 4.0, 4.0, 1.0])
    affine4[:3, 3] = a424_img.affine[:3, 3]
    bold, mask = _run(tmp_path / "in", affine4, (46, 55, 46), res=None)
    out_bold, out_mask = _outputs(tmp_path)
    info = to_atlas_grid(bold, mask, _save(a424_img, tmp_path), out_bold, out_mask)
    assert info["resampled"] is True and info["interpolation"]["mask"] == "nearest"
    _check_exact(out_bold, a424_img)
    assert nib.load(out_mask).get_data_dtype() == np.uint8


def test_other_mni_template_in_another_orientation(a424_img, tmp_path):
    """MNI152NLin2009cAsym res-2 (TemplateFlow's 97 x 115 x 97 grid), stored RAS instead of LAS."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-96.0, -132.0, -78.0]
    bold, mask = _run(tmp_path / "in", affine, (97, 115, 97), space="MNI152NLin2009cAsym")
    out_bold, out_mask = _outputs(tmp_path)
    info = to_atlas_grid(bold, mask, _save(a424_img, tmp_path), out_bold, out_mask)
    assert info["resampled"] is True and info["SourceSpace"] == "MNI152NLin2009cAsym"
    assert info["SourceOrientation"] == "RAS" and "interpolation" in info
    assert info["Transform"].startswith("identity in MNI world coordinates: MNI152NLin2009cAsym taken as MNI152NLin6Asym")
    _check_exact(out_bold, a424_img)  # a flip of the x axis is handled, not ignored


@pytest.mark.parametrize("space", ["T1w", "fsnative", "func", None])
def test_non_mni_space_is_refused(a424_img, tmp_path, space):
    folder = tmp_path / "in"
    if space is None:  # no space entity at all: native BOLD
        folder.mkdir()
        bold, mask = folder / "sub-01_task-rest_desc-preproc_bold.nii.gz", folder / "sub-01_task-rest_desc-brain_mask.nii.gz"
        nib.save(_linear_image(a424_img.affine, a424_img.shape), bold)
        nib.save(nib.Nifti1Image(np.ones(a424_img.shape, np.uint8), a424_img.affine), mask)
    else:
        bold, mask = _run(folder, a424_img.affine, a424_img.shape, space=space, res=None)
    out_bold, out_mask = _outputs(tmp_path)
    with pytest.raises(InputError, match=rf"{bold.name}: space {space!r} is not an MNI template space"):
        to_atlas_grid(bold, mask, _save(a424_img, tmp_path), out_bold, out_mask)
    assert not out_bold.exists()


def test_bad_headers_are_refused(a424_img, tmp_path):
    atlas = _save(a424_img, tmp_path)
    out_bold, out_mask = _outputs(tmp_path)
    # qform and sform that disagree
    img = _linear_image(a424_img.affine, (20, 20, 20))
    shifted = a424_img.affine.copy()
    shifted[:3, 3] += 10
    img.set_qform(shifted, code=1)
    img.set_sform(a424_img.affine, code=4)
    bold, mask = _run(tmp_path / "q", a424_img.affine, (20, 20, 20), img=img)
    with pytest.raises(InputError, match="qform and sform disagree"):
        to_atlas_grid(bold, mask, atlas, out_bold, out_mask)
    # sheared axes
    sheared = a424_img.affine.copy()
    sheared[0, 1] = 1.0
    bold, mask = _run(tmp_path / "s", sheared, (20, 20, 20))
    with pytest.raises(InputError, match="not orthogonal"):
        to_atlas_grid(bold, mask, atlas, out_bold, out_mask)
    # far outside the atlas field of view
    far = np.diag([2.0, 2.0, 2.0, 1.0])
    far[:3, 3] = [5000, 5000, 5000]
    bold, mask = _run(tmp_path / "f", far, (10, 10, 10))
    with pytest.raises(InputError, match="BOLD does not overlap"):
        to_atlas_grid(bold, mask, atlas, out_bold, out_mask)
    assert not out_bold.exists()
