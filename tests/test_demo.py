"""fmriflow.demo: the synthetic dataset, checked against independent computations.

The numbers are recomputed here from the written files (FD from the motion columns,
DVARS and the global signal from the images, CompCor by an SVD of the voxels, group
connectivity differences from the true region series) rather than read back from the
generator.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import fmriflow
from fmriflow import demo
from fmriflow.demo import bold_grid, generate_demo

SPACE = "space-MNI152NLin6Asym"


@pytest.fixture(scope="module")
def atlas_paths() -> tuple[Path, Path]:
    folder = Path(os.environ.get("FMRIFLOW_ATLAS_DIR") or Path(__file__).parents[2] / "shared/data/atlases")
    img, coords = folder / "A424+2mm.nii.gz", folder / "A424_Coordinates.dat"
    if not (img.is_file() and coords.is_file()):
        pytest.fail(f"A424 atlas not found in {folder}; set FMRIFLOW_ATLAS_DIR")
    return img, coords


def make(out: Path, atlas_paths, **kwargs) -> dict:
    return generate_demo(out, *atlas_paths, **kwargs)


# 16 subjects x 150 TRs at 4 mm: enough for a solid group-difference test, still ~15 s.
MAIN = dict(n_subjects=16, n_trs=150, bold_res=4, seed=11, jobs=1)


@pytest.fixture(scope="module")
def main(tmp_path_factory, atlas_paths) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "main"
    return out, make(out, atlas_paths, **MAIN)


@pytest.fixture(scope="module")
def res2(tmp_path_factory, atlas_paths) -> tuple[Path, Path]:
    """Two runs at 2 mm with the same arguments, jobs=2 and jobs=1."""
    base = tmp_path_factory.mktemp("demo2")
    args = dict(n_subjects=4, n_trs=20, bold_res=2, seed=5, pretraining_subjects=3)
    make(base / "j2", atlas_paths, jobs=2, **args)
    make(base / "j1", atlas_paths, jobs=1, **args)
    return base / "j2", base / "j1"


def subjects(root: Path) -> list[str]:
    return list(pd.read_csv(root / "bids" / "participants.tsv", sep="\t")["participant_id"])


def func_dir(root: Path, sub: str) -> Path:
    return root / "derivatives" / "fmriprep" / sub / "func"


def preproc_path(root: Path, sub: str, res: str | None = None) -> Path:
    res_part = f"_res-{res}" if res else ""
    return func_dir(root, sub) / f"{sub}_task-rest_{SPACE}{res_part}_desc-preproc_bold.nii.gz"


def mask_path(root: Path, sub: str, res: str | None = None) -> Path:
    res_part = f"_res-{res}" if res else ""
    return func_dir(root, sub) / f"{sub}_task-rest_{SPACE}{res_part}_desc-brain_mask.nii.gz"


def read_confounds(root: Path, sub: str) -> pd.DataFrame:
    return pd.read_csv(func_dir(root, sub) / f"{sub}_task-rest_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")


def atlas_on(img, atlas_paths) -> np.ndarray:
    """A424 labels resampled (nearest, by nilearn) onto an image's grid."""
    from nilearn.image import resample_to_img

    atlas = nib.load(atlas_paths[0])
    target = nib.Nifti1Image(np.zeros(img.shape[:3], np.uint8), img.affine)
    out = resample_to_img(atlas, target, interpolation="nearest", force_resample=True, copy_header=True)
    return np.rint(out.get_fdata()).astype(int)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def ols_residuals(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(x)), x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


def corr_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


# --------------------------------------------------------------------------- layout, BIDS


def test_layout_and_summary(main):
    root, summary = main
    assert summary["n_subjects"] == 16 and summary["bold_res"] == 4 and summary["n_edges"] == 16
    assert Path(summary["bids"]) == root / "bids"
    assert sorted(p.name for p in root.iterdir()) == ["bids", "derivatives", "ground_truth"]
    # nothing left over from the staging folder
    assert [p.name for p in root.parent.iterdir()] == ["main"]
    subs = subjects(root)
    assert subs == [f"sub-{i:02d}" for i in range(1, 17)]
    for sub in subs:
        assert (root / "bids" / sub / "anat" / f"{sub}_T1w.nii.gz").is_file()
        assert (root / "bids" / sub / "func" / f"{sub}_task-rest_bold.json").is_file()
        # bold_res 4: no res entity
        assert preproc_path(root, sub).is_file() and mask_path(root, sub).is_file()
        assert not list(func_dir(root, sub).glob("*_res-*"))
        assert (root / "ground_truth" / f"{sub}_desc-true_timeseries.tsv").is_file()


def test_bids_validator_reports_no_errors_and_only_unavoidable_warnings(main):
    root, _ = main
    exe = Path(sys.executable).parent / "bids-validator-deno"
    assert exe.is_file(), exe
    proc = subprocess.run([str(exe), str(root / "bids"), "--format", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors[:5]
    assert sorted(report["summary"]["subjects"]) == [f"{i:02d}" for i in range(1, 17)]
    # a demo is an example to copy: every warning left is one listed, with its reason, as unavoidable;
    # none about the dataset (TOO_FEW_AUTHORS, HEDVersion, SourceDatasets), none about a field the
    # top-level sidecars give every run through BIDS inheritance (Manufacturer, TaskDescription, ...)
    warnings = {(i["code"], i.get("subCode")) for i in report["issues"]["issues"] if i["severity"] == "warning"}
    assert warnings - set(demo.writers.VALIDATOR_WARNINGS_EXPECTED) == set()


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_lines_count_subjects_with_the_time_left(tmp_path, atlas_paths, monkeypatch, jobs):
    """Where stderr is a log (not a terminal): one whole line per update, subjects done of all, time left."""
    monkeypatch.setenv("FMRIFLOW_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        make(tmp_path / "demo", atlas_paths, n_subjects=2, n_trs=20, bold_res=4, seed=3, jobs=jobs)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("demo subjects:")]
    counts = [line.split("|")[2].split("[")[0].strip() for line in lines]
    assert [count for count, _ in itertools.groupby(counts)] == ["0/2", "1/2", "2/2"]  # closing may redraw 2/2
    assert all("<" in line and "subject" in line for line in lines[1:]), lines


def test_dataset_descriptions(main):
    root, _ = main
    raw = json.loads((root / "bids" / "dataset_description.json").read_text())
    assert raw["DatasetType"] == "raw" and raw["BIDSVersion"] == "1.10.0" and raw["License"]
    assert raw["GeneratedBy"][0]["Name"] == "fmriflow demo-data"
    assert raw["GeneratedBy"][0]["Version"] == fmriflow.__version__
    deriv = json.loads((root / "derivatives" / "fmriprep" / "dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative"
    assert [g["Name"] for g in deriv["GeneratedBy"]] == ["fmriflow demo-data"]  # honest: not fMRIPrep
    assert (root / "bids" / "README").read_text().strip()


def test_participants_balanced(main):
    root, _ = main
    table = pd.read_csv(root / "bids" / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "sex", "response", "drug", "site"]
    assert table["response"].value_counts().to_dict() == {0: 8, 1: 8}
    for _, group in table.groupby("response"):
        assert group["drug"].value_counts().to_dict() == {"drugA": 4, "drugB": 4}
    assert table["site"].value_counts().to_dict() == {"site1": 8, "site2": 8}
    assert set(table["sex"]) <= {"F", "M"} and table["age"].between(18, 90).all()
    sidecar = json.loads((root / "bids" / "participants.json").read_text())
    assert set(table.columns) <= set(sidecar)


# --------------------------------------------------------------------------- headers


def test_headers_at_4mm(main, atlas_paths):
    root, _ = main
    shape, affine = bold_grid(nib.load(atlas_paths[0]).affine, 4)
    assert shape == (46, 55, 46)
    assert np.allclose(affine, [[-4, 0, 0, 90], [0, 4, 0, -126], [0, 0, 4, -72], [0, 0, 0, 1]])
    for sub in subjects(root)[:3]:
        raw = nib.load(root / "bids" / sub / "func" / f"{sub}_task-rest_bold.nii.gz")
        assert raw.shape == (46, 55, 46, 150) and raw.get_data_dtype() == np.int16
        assert raw.header.get_zooms() == (4, 4, 4, 2.0)
        assert raw.header.get_xyzt_units() == ("mm", "sec")
        assert json.loads((root / "bids" / sub / "func" / f"{sub}_task-rest_bold.json").read_text()) == {
            "RepetitionTime": 2.0, "TaskName": "rest"}
        t1w = nib.load(root / "bids" / sub / "anat" / f"{sub}_T1w.nii.gz")
        assert t1w.get_data_dtype() == np.int16 and t1w.header.get_xyzt_units()[0] == "mm"
        assert np.asarray(t1w.dataobj).max() > 500
        bold = nib.load(preproc_path(root, sub))
        assert bold.shape == (*shape, 150) and bold.get_data_dtype() == np.float32
        assert np.allclose(bold.affine, affine)
        assert bold.header.get_zooms() == (4, 4, 4, 2.0) and bold.header.get_xyzt_units() == ("mm", "sec")
        mask = nib.load(mask_path(root, sub))
        assert mask.get_data_dtype() == np.uint8 and mask.shape == shape
        data = bold.get_fdata(dtype=np.float32)
        inside = np.asarray(mask.dataobj) > 0
        assert np.all(data[~inside] == 0) and np.all(data[inside] > 100)
        sidecar = json.loads(preproc_path(root, sub).with_name(preproc_path(root, sub).name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["RepetitionTime"] == 2.0 and sidecar["SkullStripped"] is False and sidecar["TaskName"] == "rest"


def test_streamed_nifti_matches_nibabel(main):
    """The volume-at-a-time writer produces exactly the bytes nibabel would write."""
    root, _ = main
    path = preproc_path(root, "sub-01")
    img = nib.load(path)
    buffer = io.BytesIO()
    again = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    again.to_file_map(nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer}))
    assert gzip.decompress(path.read_bytes()) == buffer.getvalue()


def test_res2_on_atlas_grid(res2, atlas_paths):
    root, _ = res2
    atlas = nib.load(atlas_paths[0])
    for sub in subjects(root):
        bold = nib.load(preproc_path(root, sub, "2"))
        assert bold.shape == (91, 109, 91, 20)
        assert np.array_equal(bold.affine, atlas.affine)
        assert bold.header.get_zooms()[3] == 2.0 and bold.header.get_xyzt_units() == ("mm", "sec")
        mask = nib.load(mask_path(root, sub, "2"))
        assert np.array_equal(mask.affine, atlas.affine) and mask.get_data_dtype() == np.uint8
        raw = nib.load(root / "bids" / sub / "func" / f"{sub}_task-rest_bold.nii.gz")
        assert raw.shape == (46, 55, 46, 20)
        # raw 4 mm voxels are every second voxel of the 2 mm volumes (rounded to int16)
        data = np.asarray(bold.dataobj[::2, ::2, ::2, :3])
        assert np.array_equal(np.asarray(raw.dataobj[..., :3]), np.rint(data).astype(np.int16))


def test_res3_grid_and_overwrite(tmp_path, atlas_paths):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        make(out, atlas_paths, n_subjects=2, n_trs=20, bold_res=3)
    assert (out / "keep.txt").read_text() == "user data"
    make(out, atlas_paths, n_subjects=2, n_trs=20, bold_res=3, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    bold = nib.load(preproc_path(out, "sub-01"))
    assert bold.shape == (61, 73, 61, 20)
    assert np.allclose(bold.affine, np.diag([-3.0, 3.0, 3.0, 1.0]) + [[0, 0, 0, 90], [0, 0, 0, -126], [0, 0, 0, -72], [0, 0, 0, 0]])
    # an empty existing folder is fine without overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    make(empty, atlas_paths, n_subjects=2, n_trs=20, bold_res=4)
    assert (empty / "bids" / "participants.tsv").is_file()


def test_failed_run_leaves_nothing(tmp_path, atlas_paths, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(demo, "_write_ground_truth", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make(tmp_path / "demo", atlas_paths, n_subjects=2, n_trs=20, bold_res=4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_subjects": 1}, "n_subjects"),
        ({"n_subjects": 5}, "n_subjects"),
        ({"n_subjects": 4.0}, "n_subjects"),
        ({"n_trs": 5}, "n_trs"),
        ({"tr": 0}, "tr"),
        ({"tr": "2"}, "tr"),
        ({"bold_res": 1}, "bold_res"),
        ({"seed": -1}, "seed"),
        ({"jobs": 0}, "jobs"),
        ({"jobs": True}, "jobs"),
        ({"head_motion": -1.0}, "head_motion"),
        ({"head_motion": True}, "head_motion"),
        ({"dummy_volumes": 11}, "dummy_volumes"),
        ({"pretraining_subjects": -1}, "pretraining_subjects"),
        ({"pretraining_subjects": 2, "pretraining_trs": 10}, "pretraining_trs"),
        ({"responder_loading": 0.9}, "responder_loading"),
        ({"responder_loading": True}, "responder_loading"),
        ({"sc_effect": -0.1}, "sc_effect"),
        ({"sc_block_sd": "0.1"}, "sc_block_sd"),
    ],
)
def test_bad_arguments(tmp_path, atlas_paths, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path / "x", atlas_paths, **kwargs)
    assert not (tmp_path / "x").exists()


def test_byte_identical_for_any_jobs(res2):
    j2, j1 = res2
    a, b = tree_digest(j2), tree_digest(j1)
    assert a.keys() == b.keys() and len(a) > 30
    assert a == b


# --------------------------------------------------------------------------- confounds


def test_confound_columns_and_fd(main):
    root, _ = main
    for sub in subjects(root):
        conf = read_confounds(root, sub)
        assert len(conf) == 150
        for base in ("global_signal", "csf", "white_matter", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
            for col in (base, f"{base}_derivative1", f"{base}_power2", f"{base}_derivative1_power2"):
                assert col in conf
            assert np.isnan(conf[f"{base}_derivative1"][0]) and not conf[base].isna().any()
            scale = np.abs(conf[base]).max()  # the TSV keeps 9 significant digits
            assert np.allclose(conf[f"{base}_derivative1"][1:], np.diff(conf[base]), rtol=0, atol=1e-8 * scale)
            assert np.allclose(conf[f"{base}_power2"], conf[base] ** 2, rtol=1e-6)
        motion = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
        delta = np.abs(np.diff(motion, axis=0))
        fd = delta[:, :3].sum(1) + 50.0 * delta[:, 3:].sum(1)  # Power et al. 2012
        assert np.isnan(conf["framewise_displacement"][0])
        assert np.allclose(conf["framewise_displacement"][1:], fd, rtol=1e-6, atol=1e-9)
        for col in ("dvars", "std_dvars"):
            assert np.isnan(conf[col][0]) and not conf[col][1:].isna().any()
        # motion outliers: one-hot, exactly the volumes with FD > 0.5 or std_dvars > 1.5
        flagged = np.flatnonzero((conf["framewise_displacement"].fillna(0) > 0.5) | (conf["std_dvars"].fillna(0) > 1.5))
        outlier_cols = sorted(c for c in conf if c.startswith("motion_outlier_"))
        assert outlier_cols == [f"motion_outlier_{k:02d}" for k in range(len(flagged))]
        hot = [int(np.flatnonzero(conf[c])[0]) for c in outlier_cols]
        assert hot == list(flagged) and all(conf[c].sum() == 1 for c in outlier_cols)


def test_motion_spikes_are_flagged(main):
    root, _ = main
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    spiky = {s: v["motion_spikes_volume"] for s, v in truth["subjects"].items() if v["motion_spikes_volume"]}
    assert 0 < len(spiky) < 16
    for sub, spikes in spiky.items():
        fd = read_confounds(root, sub)["framewise_displacement"].to_numpy()
        for t in spikes:
            assert fd[t] > 0.5 and fd[t + 1] > 0.5


def test_cosines_are_the_dct_highpass_basis(main):
    root, _ = main
    conf = read_confounds(root, "sub-01")
    cosines = conf[[c for c in conf if c.startswith("cosine")]].to_numpy()
    n, tr, cutoff = 150, 2.0, 128.0
    # DCT-II regressors with frequency k / (2 n tr) below 1 / cutoff (k >= 1), as fMRIPrep
    expected_k = [k for k in range(1, n) if k < int(2 * n * tr / cutoff)]
    assert cosines.shape[1] == len(expected_k) == 3
    t = np.arange(n)
    for col, k in zip(cosines.T, expected_k):
        assert np.allclose(col, np.sqrt(2 / n) * np.cos(np.pi * k * (t + 0.5) / n), atol=1e-8)


def test_global_signal_and_dvars_from_images(main):
    root, _ = main
    sub = "sub-02"
    conf = read_confounds(root, sub)
    inside = np.asarray(nib.load(mask_path(root, sub)).dataobj) > 0
    y = np.asarray(nib.load(preproc_path(root, sub)).dataobj)[inside].T.astype(np.float64)  # time x voxel
    assert np.allclose(conf["global_signal"], y.mean(1), rtol=1e-6)
    scale = 1000.0 / np.median(y.mean(0))
    dvars = np.sqrt(np.mean((np.diff(y, axis=0) * scale) ** 2, axis=1))
    assert np.allclose(conf["dvars"][1:], dvars, rtol=1e-4)
    # standardised DVARS (nipype): robust SD and AR(1) of each voxel predict the SD of its differences
    q25, q75 = np.percentile(y, [25, 75], axis=0, method="lower")
    robust_sd = (q75 - q25) / 1.349 * scale
    centred = y - y.mean(0)
    ar1 = (centred[1:] * centred[:-1]).sum(0) / (centred**2).sum(0)
    expected = dvars / np.mean(np.sqrt(2 * (1 - ar1)) * robust_sd)
    assert np.allclose(conf["std_dvars"][1:], expected, rtol=1e-4)
    assert 0.8 < np.median(expected) < 1.2


def test_compcor_matches_an_independent_svd(main, atlas_paths):
    root, _ = main
    sub = "sub-03"
    conf = read_confounds(root, sub)
    meta = json.loads((func_dir(root, sub) / f"{sub}_task-rest_desc-confounds_timeseries.json").read_text())
    img = nib.load(preproc_path(root, sub))
    inside = np.asarray(nib.load(mask_path(root, sub)).dataobj) > 0
    labels = atlas_on(img, atlas_paths)
    y = np.asarray(img.dataobj)[inside & (labels == 0)].T.astype(np.float64)
    cosines = conf[[c for c in conf if c.startswith("cosine")]].to_numpy()
    resid = ols_residuals(y, cosines)
    z = resid / resid.std(0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    acomp = conf[[f"a_comp_cor_{k:02d}" for k in range(5)]].to_numpy()
    assert np.allclose(np.abs(np.sum(u[:, :5] * acomp, axis=0)), 1.0, atol=1e-4)
    explained = s**2 / np.sum(s**2)
    for k in range(5):
        entry = meta[f"a_comp_cor_{k:02d}"]
        assert entry["Method"] == "aCompCor" and entry["Mask"] == "combined" and entry["Retained"] is True
        assert entry["SingularValue"] == pytest.approx(s[k], rel=1e-4)
        assert entry["VarianceExplained"] == pytest.approx(explained[k], rel=1e-4)
        assert entry["CumulativeVarianceExplained"] == pytest.approx(explained[: k + 1].sum(), rel=1e-4)
    tcomp = conf[[f"t_comp_cor_{k:02d}" for k in range(5)]].to_numpy()
    for comps in (acomp, tcomp):
        assert np.allclose(comps.T @ comps, np.eye(5), atol=1e-6)  # orthonormal
        basis = np.column_stack([np.ones(150), cosines])
        assert np.abs(basis.T @ comps).max() < 1e-6  # high-pass filtered, demeaned
    assert all(meta[f"t_comp_cor_{k:02d}"]["Method"] == "tCompCor" for k in range(5))
    # aCompCor captures the CSF nuisance it was planted with
    assert 1 - ols_residuals(conf["csf"].to_numpy(), acomp).var() / conf["csf"].var() > 0.3


@pytest.mark.parametrize("strategy", ["simple", "compcor", "scrubbing"])
def test_nilearn_load_confounds_strategy(main, strategy):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    root, _ = main
    for sub in subjects(root)[:4]:
        confounds, sample_mask = load_confounds_strategy(str(preproc_path(root, sub)), denoise_strategy=strategy)
        assert len(confounds) == 150 and not confounds.isna().any().any()
        assert {"trans_x", "rot_z_derivative1_power2", "cosine00"} <= set(confounds)
        if strategy == "simple":
            assert {"csf", "white_matter"} <= set(confounds) and sample_mask is None
        if strategy == "compcor":
            assert [c for c in confounds if "comp_cor" in c] == [f"a_comp_cor_{k:02d}" for k in range(5)]
        if strategy == "scrubbing":
            fd = read_confounds(root, sub)["framewise_displacement"].fillna(0).to_numpy()
            if (fd > 0.5).any():
                assert sample_mask is not None and not set(np.flatnonzero(fd > 0.5)) & set(sample_mask)


# --------------------------------------------------------------------------- ground truth


def test_edges_table(main):
    root, _ = main
    edges = pd.read_csv(root / "ground_truth" / "edges.tsv", sep="\t")
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    assert len(edges) == 16
    assert {"region_i", "region_j", "name_i", "name_j", "corr_nonresponder", "corr_responder", "delta"} <= set(edges)
    regions = np.concatenate([edges["region_i"], edges["region_j"]])
    assert len(set(regions)) == 32 and regions.min() >= 1 and regions.max() <= 424  # disjoint pairs
    network = {r["index"]: r["network"] for r in truth["regions"]}
    assert all(network[i] != network[j] for i, j in zip(edges["region_i"], edges["region_j"]))
    responder = set(truth["model"]["responder_networks"])
    assert not any(network[r] in responder for r in regions)  # edge deltas are exactly c
    table = pd.read_csv(root / "ground_truth" / "regions.tsv", sep="\t")
    assert list(table["index"]) == list(range(1, 425))
    assert set(table.loc[table["edge_region"], "index"]) == set(regions)
    assert list(table["responder_network"]) == [network[r] in responder for r in table["index"]]
    assert list(table["planted"]) == list(table["edge_region"] | table["responder_network"])
    assert np.allclose(edges["corr_responder"] - edges["corr_nonresponder"], edges["delta"])
    assert np.allclose(edges["delta"], truth["model"]["edge_delta"])
    names = {r["index"]: r["name"] for r in truth["regions"]}
    assert list(edges["name_i"]) == [names[i] for i in edges["region_i"]]
    assert truth["settings"]["seed"] == MAIN["seed"] and set(truth["subjects"]) == set(subjects(root))


def test_planted_edges_recovered_from_true_series(main):
    """Group difference of subject-wise correlations: ~delta on planted edges, ~h**2 in the
    responder networks, ~0 elsewhere."""
    root, _ = main
    table = pd.read_csv(root / "bids" / "participants.tsv", sep="\t")
    edges = pd.read_csv(root / "ground_truth" / "edges.tsv", sep="\t")
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    corr = {0: [], 1: []}
    for sub, response in zip(table["participant_id"], table["response"]):
        series = pd.read_csv(root / "ground_truth" / f"{sub}_desc-true_timeseries.tsv", sep="\t")
        assert series.shape == (150, 424)
        corr[response].append(np.corrcoef(series.to_numpy().T))
    mean0, mean1 = np.mean(corr[0], axis=0), np.mean(corr[1], axis=0)
    diff = mean1 - mean0
    i, j = edges["region_i"].to_numpy() - 1, edges["region_j"].to_numpy() - 1
    planted = np.zeros((424, 424), bool)
    planted[i, j] = planted[j, i] = True
    network = np.array([r["network"] for r in truth["regions"]])
    responder = np.isin(network, truth["model"]["responder_networks"])
    block = responder[:, None] & responder[None, :]
    upper = np.triu_indices(424, 1)
    others = diff[upper][~planted[upper] & ~block[upper]]
    delta = truth["model"]["edge_delta"]
    # Monte Carlo of this design (16 subjects x 150 TRs): SD 0.015 of the planted-minus-
    # other mean, 0.007 of the other mean; the bounds are 4 SD.
    assert abs(others.mean()) < 0.03
    assert abs(diff[i, j].mean() - others.mean() - delta) < 0.06
    assert np.mean(diff[i, j] > np.percentile(others, 99)) >= 14 / 16
    # the responder factor: +h**2 on every pair of responder-network regions (a mean over
    # thousands of pairs; its error is the subjects' sampling of the factor, bound generous)
    h2 = truth["model"]["responder_loading"] ** 2
    assert abs(diff[upper][block[upper]].mean() - others.mean() - h2) < 0.1
    # the network structure of the non-responders' correlations
    network = np.array([r["network"] for r in truth["regions"]])
    same = (network[:, None] == network[None, :])[upper]
    assert mean0[upper][same].mean() == pytest.approx(truth["model"]["within_network_corr"], abs=0.05)
    assert mean0[upper][~same].mean() == pytest.approx(truth["model"]["between_network_corr"], abs=0.03)


def test_signal_amplitude_falls_with_age(main):
    """Each subject's true region signals have SD 1 - a z (z: age scaled to [-1, 1] over the model's
    age range), recorded per subject; the ages span that range."""
    root, _ = main
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    low, high = truth["model"]["age_range"]
    table = pd.read_csv(root / "bids" / "participants.tsv", sep="\t")
    assert table["age"].between(low, high).all() and table["age"].std() > 8
    expected = 1 - truth["model"]["age_amplitude"] * (table["age"].to_numpy() - (low + high) / 2) / ((high - low) / 2)
    recorded = np.array([truth["subjects"][p]["signal_amplitude"] for p in table["participant_id"]])
    np.testing.assert_allclose(recorded, expected, atol=1e-6)
    sd = np.array([pd.read_csv(root / "ground_truth" / f"{p}_desc-true_timeseries.tsv", sep="\t").to_numpy().std()
                   for p in table["participant_id"]])
    # 150 TRs of an AR(1) at 0.6 with network factors: the SD of one subject's pooled SD is a few percent
    np.testing.assert_allclose(sd, expected, rtol=0.15)
    assert np.corrcoef(table["age"], sd)[0, 1] < -0.7


def test_cleaned_region_means_track_true_series(main, atlas_paths):
    """After regressing out the 'simple' confounds, atlas region means follow the truth."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    root, _ = main
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    labels = None
    for sub in subjects(root)[:4]:
        img = nib.load(preproc_path(root, sub))
        if labels is None:
            labels = atlas_on(img, atlas_paths)
        inside = np.asarray(nib.load(mask_path(root, sub)).dataobj) > 0
        data = np.asarray(img.dataobj)[inside].T.astype(np.float64)
        lab = labels[inside]
        regions = [r for r in range(1, 425) if (lab == r).sum() >= 3]
        means = np.column_stack([data[:, lab == r].mean(1) for r in regions])
        true = pd.read_csv(root / "ground_truth" / f"{sub}_desc-true_timeseries.tsv", sep="\t").to_numpy()
        true = true[:, np.array(regions) - 1]
        confounds, _ = load_confounds_strategy(str(preproc_path(root, sub)), denoise_strategy="simple")
        cleaned = corr_cols(ols_residuals(means, confounds.to_numpy()), ols_residuals(true, confounds.to_numpy()))
        raw = corr_cols(means, true)
        assert np.median(cleaned) > 0.9
        assert np.median(cleaned) > np.median(raw) + 0.1  # the nuisance is real and removable
        # regions that the subject's dropout sphere removed are absent from its mask
        absent = truth["subjects"][sub]["regions_absent"]
        assert all(r not in regions for r in absent)


# --------------------------------------------------------------------------- dynamics, pretraining cohort


def pooled_lag1(series: list[np.ndarray]) -> float:
    """Lag-1 autocorrelation pooled over (T, n) arrays: sum x_t x_t+1 / sum x_t^2, means removed."""
    num = den = 0.0
    for x in series:
        x = x - x.mean(axis=0)
        num += (x[1:] * x[:-1]).sum()
        den += (x * x).sum()
    return num / den


def test_responders_slower_dynamics_at_equal_fc(main):
    """The dynamics network's regions: lag-1 autocorrelation as the closed form per group
    (l^2 phi_f + (1 - l^2) phi), other networks at phi in both groups, zero-lag FC within the
    network unchanged; regions.tsv and ground_truth.json say which regions and which values."""
    root, _ = main
    truth = json.loads((root / "ground_truth" / "ground_truth.json").read_text())
    model = truth["model"]
    regions = pd.read_csv(root / "ground_truth" / "regions.tsv", sep="\t")
    network = np.array([r["network"] for r in truth["regions"]])
    k = model["dynamics_network"]
    assert k not in model["responder_networks"]
    assert list(regions["dynamics_network"]) == list(network == k)
    phi = model["ar_coef_at_tr2"] ** (truth["settings"]["tr"] / 2)
    phi_f = model["dynamics_ar_coef_at_tr2"] ** (truth["settings"]["tr"] / 2)
    share = model["network_loading"] ** 2
    expected = {"non-responder": phi, "responder": share * phi_f + (1 - share) * phi}
    assert model["dynamics_region_lag1"] == pytest.approx(expected)
    assert model["dynamics_ar_coef"] == pytest.approx({"non-responder": phi, "responder": phi_f})

    table = pd.read_csv(root / "bids" / "participants.tsv", sep="\t")
    series = {0: [], 1: []}
    for sub, response in zip(table["participant_id"], table["response"]):
        series[response].append(pd.read_csv(root / "ground_truth" / f"{sub}_desc-true_timeseries.tsv", sep="\t").to_numpy())
    inside, outside = network == k, ~np.isin(network, [k, *model["responder_networks"]])
    # 8 subjects x 150 TRs a group: SD of the pooled estimate about 0.015 (its bias, -(1 + phi) / T, 0.01)
    for response, group in ((0, "non-responder"), (1, "responder")):
        assert pooled_lag1([x[:, inside] for x in series[response]]) == pytest.approx(expected[group], abs=0.04)
        assert pooled_lag1([x[:, outside] for x in series[response]]) == pytest.approx(phi, abs=0.04)
    upper = np.triu_indices(int(inside.sum()), 1)
    fc = {r: np.mean([np.corrcoef(x[:, inside].T)[upper].mean() for x in series[r]]) for r in (0, 1)}
    assert abs(fc[1] - fc[0]) < 0.06  # zero-lag FC cannot see it (within-network r about 0.42 in both)


def test_pretraining_cohort_files_and_dynamics(res2, atlas_paths):
    """The pretraining cohort reads as XCP-D files of A424 (names, order, TR) through the timeseries
    reader; each network's recorded coefficient orders its measured slowness."""
    from fmriflow.atlas import a424_labels_table
    from fmriflow.demo.pretraining import simulate_pretraining_subject
    from fmriflow.timeseries.readers import read_series

    root = res2[1] / "pretraining"
    names = list(a424_labels_table(atlas_paths[1])["name"])
    truth = json.loads((root / "ground_truth.json").read_text())
    participants = pd.read_csv(root / "xcp_d" / "participants.tsv", sep="\t")
    assert list(participants["participant_id"]) == ["sub-pt001", "sub-pt002", "sub-pt003"] == sorted(truth["factor_ar_coef"])
    assert not {"response", "drug"} & set(participants)  # unlabelled
    assert list(pd.read_csv(root / "atlas-A424_dseg.tsv", sep="\t")["name"]) == names
    files = sorted(root.glob("xcp_d/sub-*/func/*_atlas-A424_stat-mean_timeseries.tsv"))
    assert len(files) == 3
    series = read_series(files[0], "xcpd")
    assert series.tr == 2.0 and series.labels == names and series.values.shape == (20, 424)

    regions = pd.read_csv(res2[1] / "ground_truth" / "regions.tsv", sep="\t")
    networks = regions["network"].to_numpy()
    measured, drawn = [], []
    for seed in range(6):
        y, phi = simulate_pretraining_subject(np.random.default_rng(seed), networks, 400, 2.0)
        low, high = truth["model"]["ar_range"]
        assert np.all((phi >= low) & (phi <= high))
        for k in range(networks.max() + 1):
            measured.append(pooled_lag1([y[:, networks == k].mean(axis=1, keepdims=True)]))
            drawn.append(phi[k])
    # band-passed, lag-1 autocorrelations all sit near 1; the rank order of slowness survives
    from scipy.stats import spearmanr

    assert spearmanr(drawn, measured).statistic > 0.6


def test_responder_loading_sets_the_fc_effect():
    """--responder-loading: responders' correlation between two regions of the responder networks rises by
    the loading squared (a common factor's covariance), the non-responders' stays as it was."""
    from fmriflow.demo.model import MODEL, population_covariances

    networks = np.array([0, 0, 1, 2, 2, 3])
    edges = pd.DataFrame({"region_i": [5], "region_j": [6]})
    sigma0, sigma1 = population_covariances(networks, edges)
    weak0, weak1 = population_covariances(networks, edges, responder_loading=0.2)
    np.testing.assert_array_equal(weak0, sigma0)
    assert sigma1[0, 2] - sigma0[0, 2] == pytest.approx(MODEL.responder_loading ** 2)
    assert weak1[0, 2] - weak0[0, 2] == pytest.approx(0.04)
    assert weak1[0, 3] == pytest.approx(weak0[0, 3])  # network 2 is no responder network
    assert weak1[4, 5] - weak0[4, 5] == pytest.approx(MODEL.edge_delta)  # the planted edge is left alone
