"""fmriflow.datasets.voxels: z-scoring in the mask against a numpy computation on nibabel's arrays,
crop / pad geometry and the output affine, float16 storage, windows, the region dataset's splits,
bad inputs and the atomic build."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmriflow.datasets.regions import build_dataset, make_splits, read_splits
from fmriflow.errors import InputError
from fmriflow.datasets.voxels import VoxelWindowDataset, build_voxel_dataset, load_card, read_runs

SHAPE = (14, 18, 12)
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def write_run(folder, subject, n_frames, seed, mask=None, shape=SHAPE, affine=AFFINE):
    rng = np.random.default_rng(seed)
    data = (800 + 40 * rng.standard_normal((*shape, n_frames)) + rng.uniform(0, 200, shape)[..., None]).astype(np.float32)
    if mask is None:
        mask = np.zeros(shape, np.uint8)
        mask[2:-2, 1:-3, 2:-1] = 1
        mask[5, 5, 5] = 0
    bold, mask_path = folder / f"sub-{subject}_bold.nii.gz", folder / f"sub-{subject}_mask.nii.gz"
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((2, 2, 2, 1.5))
    nib.save(img, bold)
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    return {"run": f"sub-{subject}/func/sub-{subject}_task-rest", "bold": bold, "mask": mask_path}


@pytest.fixture
def runs(tmp_path):
    lengths = {"01": 10, "02": 7, "03": 9, "04": 12}
    return [write_run(tmp_path, s, n, seed) for seed, (s, n) in enumerate(lengths.items())]


def splits_for(runs, seed=0):
    return make_splits([r["run"].split("/")[0] for r in runs], fractions=(0.5, 0.25, 0.25), seed=seed)


def expected_frames(run) -> np.ndarray:
    """(T, X, Y, Z) float64: (v - mean) / std over in-mask voxels of all frames, background = min z."""
    data = nib.load(run["bold"]).get_fdata()
    mask = nib.load(run["mask"]).get_fdata() > 0
    inside = data[mask]  # (voxels, T)
    z = (data - inside.mean()) / inside.std()
    z[~mask] = ((inside.min() - inside.mean()) / inside.std())
    return np.moveaxis(z, -1, 0)


def test_zscoring_equals_numpy_on_nibabel_arrays(tmp_path, runs):
    build_voxel_dataset(runs, splits_for(runs), tmp_path / "ds", shape=SHAPE, dtype="float32")
    frames = np.load(tmp_path / "ds" / "frames.npy")
    table = read_runs(tmp_path / "ds")
    assert frames.dtype == np.float32 and frames.shape == (38, *SHAPE)
    for run in runs:
        row = table.set_index("run").loc[run["run"]]
        ours = frames[row["first_frame"]:row["first_frame"] + row["n_frames"]]
        np.testing.assert_allclose(ours, expected_frames(run), atol=2e-6, rtol=0)
        inside = nib.load(run["bold"]).get_fdata()[nib.load(run["mask"]).get_fdata() > 0]
        # runs.tsv holds 9 significant digits
        assert row["mean"] == pytest.approx(inside.mean(), rel=1e-8) and row["std"] == pytest.approx(inside.std(), rel=1e-8)
        assert row["tr"] == 1.5


def test_crop_and_pad_are_centred_and_the_affine_follows(tmp_path, runs):
    target = (10, 21, 12)  # x: crop 4 (2 + 2); y: pad 3 (1 + 2); z: unchanged
    card = build_voxel_dataset(runs, splits_for(runs), tmp_path / "ds", shape=target, dtype="float32")
    frames = np.load(tmp_path / "ds" / "frames.npy")
    first = read_runs(tmp_path / "ds").set_index("run").loc[runs[0]["run"]]
    ours = frames[first["first_frame"]:first["first_frame"] + first["n_frames"]]
    full = expected_frames(runs[0])
    background = full[0, 0, 0, 0]
    assert np.allclose(ours[:, :, :1], background) and np.allclose(ours[:, :, -2:], background)
    np.testing.assert_allclose(ours[:, :, 1:19], full[:, 2:12], atol=2e-6, rtol=0)
    # output voxel (i, j, k) is source voxel (i + 2, j - 1, k): the card's affine maps both to one point
    out_affine = np.array(card["affine"])
    for voxel in ((0, 0, 0), (3, 7, 5)):
        source = np.array(voxel) + [2, -1, 0]
        np.testing.assert_allclose(out_affine @ [*voxel, 1], AFFINE @ [*source, 1])
    # mask x-range 2..11 survives the crop to 2..11 exactly: nothing of the brain is cut
    assert card["brain_voxels_cropped"] == 0
    card = build_voxel_dataset(runs, splits_for(runs), tmp_path / "ds2", shape=(6, 18, 12))
    mask = nib.load(runs[0]["mask"]).get_fdata() > 0
    assert read_runs(tmp_path / "ds2")["brain_voxels_cropped"].iloc[0] == mask.sum() - mask[4:10].sum()


def test_float16_is_the_float32_result_rounded(tmp_path, runs):
    build_voxel_dataset(runs, splits_for(runs), tmp_path / "f32", shape=SHAPE, dtype="float32")
    card = build_voxel_dataset(runs, splits_for(runs), tmp_path / "f16", shape=SHAPE)
    f16, f32 = np.load(tmp_path / "f16" / "frames.npy"), np.load(tmp_path / "f32" / "frames.npy")
    assert card["dtype"] == "float16" and f16.dtype == np.float16
    np.testing.assert_array_equal(f16, f32.astype(np.float16))


def test_splits_are_the_region_datasets(tmp_path, runs):
    """Build the region dataset first, then the voxel dataset from its splits.tsv, as the DAG does."""
    regional = []
    for number, run in enumerate(runs):
        path = tmp_path / f"ts{number}.tsv"
        pd.DataFrame(np.random.default_rng(number).standard_normal((30, 3)), columns=["a", "b", "c"]).to_csv(
            path, sep="\t", index=False)
        regional.append({"run": run["run"], "tr": 1.5, "timeseries": path})
    build_dataset(regional, splits_for(runs, seed=7), tmp_path / "regions", window=10, stride=10)
    build_voxel_dataset(runs, tmp_path / "regions" / "splits.tsv", tmp_path / "voxels", shape=SHAPE)
    region_splits, voxel_splits = read_splits(tmp_path / "regions"), read_splits(tmp_path / "voxels")
    pd.testing.assert_frame_equal(voxel_splits, region_splits)
    table = read_runs(tmp_path / "voxels")
    assert dict(zip(table["subject"], table["split"])) == dict(zip(region_splits["subject"], region_splits["split"]))
    card = load_card(tmp_path / "voxels")
    assert [card["splits"][s]["subjects"] for s in ("train", "val", "test")] == [2, 1, 1]
    assert {i["path"] for i in card["Provenance"]["Inputs"]} == {str(r[k]) for r in runs for k in ("bold", "mask")}


def test_windows_and_labels(tmp_path, runs):
    build_voxel_dataset(runs, splits_for(runs), tmp_path / "ds", shape=SHAPE, dtype="float32")
    frames = np.load(tmp_path / "ds" / "frames.npy")
    table = read_runs(tmp_path / "ds")
    train = table[table["split"] == "train"]
    labels = {s: float(i) for i, s in enumerate(table["subject"])}
    ds = VoxelWindowDataset(tmp_path / "ds", "train", window=4, stride=3, labels=labels)
    expected = [(r.first_frame + s, r.subject) for r in train.itertuples() for s in range(0, r.n_frames - 3, 3)]
    assert len(ds) == len(expected)
    for i, (frame, subject) in enumerate(expected):
        sample = ds[i]
        np.testing.assert_array_equal(sample["x"].numpy(), frames[frame:frame + 4])
        assert float(sample["y"]) == labels[subject]
    assert len(VoxelWindowDataset(tmp_path / "ds", "val", window=13)) == 0  # runs shorter than a window
    with pytest.raises(InputError, match="no label for subjects"):
        VoxelWindowDataset(tmp_path / "ds", "train", window=4, labels={})


def test_bad_inputs_are_named(tmp_path, runs):
    with pytest.raises(InputError, match="subject '04' .* has no split"):
        build_voxel_dataset(runs, splits_for(runs[:3]), tmp_path / "ds")
    other = write_run(tmp_path, "05", 8, 9, mask=np.ones((14, 18, 11), np.uint8))
    with pytest.raises(InputError, match="sub-05_mask.nii.gz: mask shape"):
        build_voxel_dataset([*runs, other], splits_for([*runs, other]), tmp_path / "ds")
    flat = write_run(tmp_path, "06", 5, 10)
    nib.save(nib.Nifti1Image(np.full((*SHAPE, 5), 3.0, np.float32), AFFINE), flat["bold"])
    with pytest.raises(InputError, match="sub-06_bold.nii.gz: the BOLD values inside the brain mask are constant"):
        build_voxel_dataset([flat], splits_for([flat]), tmp_path / "ds")


def test_failed_build_leaves_nothing_and_short_runs_are_listed(tmp_path, runs):
    flat = write_run(tmp_path, "06", 5, 10)
    nib.save(nib.Nifti1Image(np.full((*SHAPE, 5), 3.0, np.float32), AFFINE), flat["bold"])
    out = tmp_path / "out"
    with pytest.raises(InputError):
        build_voxel_dataset([*runs, flat], splits_for([*runs, flat]), out / "ds")
    assert list(out.iterdir()) == []  # no dataset, no temporary folder
    card = build_voxel_dataset(runs, splits_for(runs), out / "ds", shape=SHAPE, min_frames=9)
    assert [s["run"] for s in card["skipped_runs"]] == [runs[1]["run"]]
    assert json.loads((out / "ds" / "dataset_card.json").read_text())["n_frames"] == 10 + 9 + 12
