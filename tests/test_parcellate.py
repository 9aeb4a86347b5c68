"""fmriflow.parcellate against nilearn's NiftiLabelsMasker (the independent reference)."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.maskers import NiftiLabelsMasker

from conftest import random_bold
from fmriflow.errors import InputError
from fmriflow.parcellate import parcellate


@pytest.fixture(scope="module")
def bold(a424_img):
    return random_bold(a424_img.shape, 12, a424_img.affine, seed=1)


@pytest.fixture(scope="module")
def mask(a424_img):
    """Brain mask with a cut-out: some regions lose part of their voxels, some all of them."""
    labels = np.asarray(a424_img.dataobj)
    data = (labels > 0).astype(np.uint8)
    data[:, 75:, :32] = 0  # an inferior-frontal "dropout" slab
    data[labels == 5] = 0  # a region with no voxel left
    return nib.Nifti1Image(data, a424_img.affine)


def _nilearn(bold, labels_img, mask, strategy):
    masker = NiftiLabelsMasker(labels_img=labels_img, mask_img=mask, strategy=strategy, keep_masked_labels=False)
    values = masker.fit_transform(bold)
    ids = masker.region_ids_  # column position -> label value
    return pd.DataFrame(values, columns=[int(ids[i]) for i in range(values.shape[1])])


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_equals_nilearn(bold, a424_img, a424_labels, mask, strategy):
    ours = parcellate(bold, a424_img, a424_labels, mask, strategy=strategy, min_coverage=0.0)
    ref = _nilearn(bold, a424_img, mask, strategy)
    assert ours.timeseries.shape == (12, 424)
    assert list(ours.timeseries.columns) == a424_labels["name"].tolist()
    covered = ours.coverage["n_voxels_in_mask"].to_numpy() > 0
    assert sorted(ref.columns) == a424_labels["index"][covered].tolist()
    for label in ref.columns:
        np.testing.assert_allclose(ours.timeseries.iloc[:, label - 1], ref[label], atol=1e-5, rtol=0)
    assert ours.timeseries.iloc[:, ~covered].isna().all().all()


def test_coverage_threshold_gives_nan_columns(bold, a424_img, a424_labels, mask):
    result = parcellate(bold, a424_img, a424_labels, mask, min_coverage=0.9)
    labels = np.rint(np.asarray(a424_img.dataobj)).astype(int)
    in_mask = np.asarray(mask.dataobj) > 0
    for _, row in result.coverage.iterrows():
        n_total = int((labels == row["index"]).sum())
        n_in = int(((labels == row["index"]) & in_mask).sum())
        assert row["n_voxels"] == n_total and row["n_voxels_in_mask"] == n_in
        assert row["used"] == (n_in > 0 and n_in / n_total >= 0.9)
        column = result.timeseries[row["name"]]
        assert column.isna().all() != row["used"]
    assert 0 < len(result.dropped) < 424
    assert result.timeseries.shape[1] == 424


def test_rejects_other_grid(bold, a424_img, a424_labels):
    other = nib.Nifti1Image(np.asarray(a424_img.dataobj)[::2, ::2, ::2], a424_img.affine * [[2], [2], [2], [1]])
    with pytest.raises(InputError, match="differs from the BOLD grid"):
        parcellate(bold, other, a424_labels)


def test_rejects_nan_voxels(a424_img, a424_labels, tmp_path):
    img = random_bold(a424_img.shape, 5, a424_img.affine)
    data = np.asarray(img.dataobj).copy()
    labels = np.asarray(a424_img.dataobj)
    idx = np.argwhere(labels == 1)[0]
    data[tuple(idx)] = np.nan
    path = tmp_path / "bold_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, a424_img.affine), path)
    with pytest.raises(InputError, match="bold_nan.nii.gz.*NaN"):
        parcellate(path, a424_img, a424_labels)


def test_rejects_3d(a424_img, a424_labels):
    with pytest.raises(InputError, match="4D"):
        parcellate(a424_img, a424_img, a424_labels)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_files_stream_to_the_same_result(bold, a424_img, a424_labels, mask, tmp_path, suffix, monkeypatch):
    """Streaming from disk in small chunks equals the in-memory reduction and nilearn."""
    import fmriflow.parcellate as parc

    monkeypatch.setattr(parc, "CHUNK_BYTES", 5 * 902629 * 4)  # 5 volumes per chunk: 12 volumes -> 3 chunks
    path = tmp_path / f"bold{suffix}"
    nib.save(bold, path)
    from_file = parcellate(path, a424_img, a424_labels, mask, min_coverage=0.0)
    in_memory = parcellate(bold, a424_img, a424_labels, mask, min_coverage=0.0)
    pd.testing.assert_frame_equal(from_file.timeseries, in_memory.timeseries)


def test_scaled_integers_are_unscaled(a424_img, a424_labels, tmp_path):
    """int16 data with scl_slope/scl_inter: the result is in the scaled units, as nilearn reads them."""
    rng = np.random.default_rng(4)
    data = rng.integers(-2000, 2000, size=(*a424_img.shape, 4)).astype(np.int16)
    img = nib.Nifti1Image(data, a424_img.affine)
    img.header.set_slope_inter(0.5, 100.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    ours = parcellate(path, a424_img, a424_labels, min_coverage=0.0)
    ref = _nilearn(path, a424_img, None, "mean")
    np.testing.assert_allclose(ours.timeseries.iloc[:, ref.columns.to_numpy() - 1].to_numpy(), ref.to_numpy(), atol=1e-5)


def test_truncated_gzip_names_the_file(bold, a424_img, a424_labels, tmp_path):
    path = tmp_path / "cut_bold.nii.gz"
    nib.save(bold, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut_bold.nii.gz.*truncated"):
        parcellate(path, a424_img, a424_labels)


def test_several_atlases_in_one_pass(bold, a424_img, a424_labels, mask):
    """A second atlas (cortex merged into hemispheres) reduces from the same read."""
    from fmriflow.parcellate import parcellate_many

    labels = np.rint(np.asarray(a424_img.dataobj)).astype(int)
    hemis = np.where(labels == 0, 0, np.where(labels <= 180, 1, np.where(labels <= 360, 2, 3)))
    hemi_img = nib.Nifti1Image(hemis.astype(np.int16), a424_img.affine)
    hemi_lut = pd.DataFrame({"index": [1, 2, 3], "name": ["ctx_R", "ctx_L", "other"]})
    a, b = parcellate_many(bold, [(a424_img, a424_labels), (hemi_img, hemi_lut)], mask, min_coverage=0.0)
    assert a.timeseries.shape == (12, 424) and b.timeseries.shape == (12, 3)
    ref = _nilearn(bold, hemi_img, mask, "mean")
    np.testing.assert_allclose(b.timeseries.to_numpy(), ref[[1, 2, 3]].to_numpy(), atol=1e-5)


def test_labels_missing_from_table_rejected(bold, a424_img, a424_labels):
    with pytest.raises(InputError, match="missing from its look-up table"):
        parcellate(bold, a424_img, a424_labels.iloc[:-2])
