"""Atlas fetching: sources in order, sha256 verification, the offline error, the look-up table."""

import shutil

import numpy as np
import pytest

from fmriflow import atlas
from fmriflow.errors import InputError


def test_local_dir_is_verified_and_cached(atlas_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    files = atlas.fetch_a424(tmp_path / "cache", atlas_dir, download=False)
    for key, spec in atlas.A424_FILES.items():
        assert files[key] == tmp_path / "cache" / spec.name
        assert files[key].read_bytes() == (atlas_dir / spec.name).read_bytes()


def test_environment_variable_is_honoured(atlas_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(atlas.ATLAS_DIR_ENV, str(atlas_dir))
    files = atlas.fetch_a424(tmp_path / "cache", download=False)
    assert files["labels_img"].is_file()


def test_corrupt_copy_is_refused(atlas_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    bad = tmp_path / "bad"
    shutil.copytree(atlas_dir, bad)
    (bad / "A424_Coordinates.dat").write_text("1\t0\t0\t0\n")
    with pytest.raises(InputError, match="A424_Coordinates.dat: sha256 .* does not match"):
        atlas.fetch_a424(tmp_path / "cache", bad, download=False)
    assert not (tmp_path / "cache" / "A424_Coordinates.dat").exists()


def test_offline_without_copy_names_the_options(tmp_path, monkeypatch):
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    with pytest.raises(atlas.AtlasUnavailableError) as err:
        atlas.fetch_a424(tmp_path / "empty-cache", download=False)
    message = str(err.value)
    assert "FMRIFLOW_ATLAS_DIR" in message and "atlas.path" in message and "raw.githubusercontent.com" in message


def test_failed_download_names_the_options(tmp_path, monkeypatch):
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    unreachable = atlas.AtlasFile("A424+2mm.nii.gz", "http://127.0.0.1:9/none", "0" * 64)
    monkeypatch.setitem(atlas.A424_FILES, "labels_img", unreachable)
    with pytest.raises(atlas.AtlasUnavailableError, match="download failed.*FMRIFLOW_ATLAS_DIR"):
        atlas.fetch_a424(tmp_path / "cache", timeout=2)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left behind


def test_labels_table(atlas_dir, a424_img):
    table = atlas.a424_labels_table(atlas_dir / "A424_Coordinates.dat")
    assert table["index"].tolist() == list(range(1, 425))
    assert table["name"].is_unique
    assert (table["group"] == "cortex").sum() == 360 and (table["group"] == "subcortex").sum() == 36
    # The listed coordinates lie inside (or next to) their own region: check against the image.
    labels = np.rint(np.asarray(a424_img.dataobj)).astype(int)
    inv = np.linalg.inv(a424_img.affine)
    hits = 0
    for _, row in table.iterrows():
        ijk = np.rint(inv @ [row["x"], row["y"], row["z"], 1])[:3].astype(int)
        window = labels[tuple(slice(max(c - 3, 0), c + 4) for c in ijk)]
        hits += int((window == row["index"]).any())
    assert hits >= 400
    # right-hemisphere cortex (labels 1-180) has positive x in MNI
    assert (table.loc[table["index"] <= 180, "x"] > 0).mean() > 0.95


def test_label_image_must_be_3d_integer_labels(tmp_path):
    import nibabel as nib

    from fmriflow.atlas import label_data

    labels = np.zeros((4, 4, 4), np.float32)
    labels[:2] = 1
    assert np.array_equal(label_data(nib.Nifti1Image(labels, np.eye(4)), "a.nii"), labels)
    with pytest.raises(InputError, match="probabilistic"):
        label_data(nib.Nifti1Image(labels * 0.5, np.eye(4)), "p.nii")
    with pytest.raises(InputError, match=r"3D image, got shape \(4, 4, 4, 2\)"):
        label_data(nib.Nifti1Image(np.stack([labels, labels], -1), np.eye(4)), "4d.nii")
