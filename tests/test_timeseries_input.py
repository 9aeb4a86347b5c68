"""input.mode timeseries: the readers, the atlas table, discovery, and the real DAG from XCP-D-style and
C-PAC / ABIDE-style region time series of a 100-region atlas to the report.

Numbers are checked against independent computations: numpy's loadtxt / pandas on the files the
test wrote, scipy's center_of_mass for label-image centroids, numpy's corrcoef for the FC.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmriflow.errors import InputError
from fmriflow.io import read_tsv
from fmriflow.timeseries import centroid_table, check_series, coordinates_table, find_inputs, read_series
from fmriflow.timeseries.settings import config_problems

from test_workflow import SHORT_RUNS, demo_settings, merged, run_snakemake

N_REGIONS = 100
ATLAS = "toy100"


# --------------------------------------------------------------------------- synthetic data


def atlas_table(n: int = N_REGIONS) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"index": np.arange(1, n + 1), "name": [f"Net{k % 7}_R{k:03d}" for k in range(1, n + 1)],
                         "x": rng.uniform(-70, 70, n).round(1), "y": rng.uniform(-100, 70, n).round(1),
                         "z": rng.uniform(-40, 75, n).round(1)})


def signals(seed: int, n_time: int = 60, n: int = N_REGIONS) -> np.ndarray:
    """Time x regions: a few shared network signals plus noise, so the FC has structure."""
    rng = np.random.default_rng(seed)
    networks = rng.standard_normal((n_time, 7))
    return networks[:, np.arange(n) % 7] * 0.8 + rng.standard_normal((n_time, n))


def participants(subjects: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects],
                         "response": [k % 2 for k in range(len(subjects))],
                         "site": ["A" if k < len(subjects) // 2 else "B" for k in range(len(subjects))]})


def write_xcpd(root: Path, subjects: list[str], table: pd.DataFrame, tr: float = 2.0) -> dict[str, Path]:
    """XCP-D layout: sub-X/func/sub-X_task-rest_space-MNI152NLin6Asym_atlas-<A>_stat-mean_timeseries.tsv + JSON;
    the first subject's last region n/a (below XCP-D's coverage threshold)."""
    files = {}
    for k, subject in enumerate(subjects):
        func = root / f"sub-{subject}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        values = signals(k)
        if k == 0:
            values[:, -1] = np.nan
        name = f"sub-{subject}_task-rest_space-MNI152NLin6Asym_atlas-{ATLAS}_stat-mean_timeseries"
        pd.DataFrame(values, columns=table["name"]).to_csv(func / f"{name}.tsv", sep="\t", index=False, na_rep="n/a")
        (func / f"{name}.json").write_text(json.dumps({"RepetitionTime": tr, "Sources": []}))
        # an atlas the config does not name, and XCP-D's coverage table: neither is a run
        other = f"sub-{subject}_task-rest_space-MNI152NLin6Asym_atlas-Other_stat-mean_timeseries.tsv"
        pd.DataFrame(values[:, :5]).to_csv(func / other, sep="\t", index=False)
        (func / name.replace("stat-mean_timeseries", "stat-coverage_bold.tsv")).write_text("Node\tcoverage\n")
        files[subject] = func / f"{name}.tsv"
    participants(subjects).to_csv(root / "participants.tsv", sep="\t", index=False)
    return files


def write_cpac(root: Path, subjects: list[str], table: pd.DataFrame) -> dict[str, Path]:
    """ABIDE-Preprocessed layout: <SITE>_<SUBID>_rois_<atlas>.1D, a '#<label>' header, tab-separated rows."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for k, subject in enumerate(subjects):
        path = root / f"{'Pitt' if k % 2 else 'UCLA_1'}_{subject}_rois_{ATLAS}.1D"
        header = "\t".join(f"#{i}" for i in table["index"])
        rows = "\n".join("\t".join(f"{v:.6f}" for v in row) for row in signals(100 + k))
        path.write_text(header + "\n" + rows + "\n")
        files[subject] = path
    return files


def coordinates_file(folder: Path, table: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ATLAS}_coordinates.tsv"
    table[["name", "x", "y", "z"]].to_csv(path, sep="\t", index=False)  # no index column: numbered 1..N
    return path


# --------------------------------------------------------------------------- readers


def test_xcpd_reader_orders_regions_by_name_and_keeps_a_region_without_data(tmp_path):
    table = atlas_table()
    values = signals(0)
    values[:, 3] = np.nan
    shuffled = np.random.default_rng(0).permutation(N_REGIONS)
    path = tmp_path / "sub-01_task-rest_space-MNI152NLin6Asym_atlas-toy100_stat-mean_timeseries.tsv"
    # XCP-D appends its parameters' hash to column names
    columns = [f"{n}_hash-ab12" for n in table["name"].iloc[shuffled]]
    pd.DataFrame(values[:, shuffled], columns=columns).to_csv(path, sep="\t", index=False, na_rep="n/a")
    path.with_suffix(".json").write_text(json.dumps({"SamplingFrequency": 0.5}))
    frame, tr = check_series(read_series(path, "xcpd"), path, table, ATLAS)
    assert tr == 2.0
    assert list(frame.columns) == table["name"].tolist()
    reread = pd.read_csv(path, sep="\t", na_values="n/a")
    reread.columns = [c.removesuffix("_hash-ab12") for c in reread.columns]
    np.testing.assert_array_equal(frame.to_numpy(), reread[table["name"]].to_numpy())
    assert frame.iloc[:, 3].isna().all() and frame.drop(columns=frame.columns[3]).notna().all().all()


def test_cpac_reader_equals_loadtxt_and_maps_label_numbers(tmp_path):
    table = atlas_table()
    path = write_cpac(tmp_path, ["0050002"], table)["0050002"]
    series = read_series(path, "cpac")
    assert series.labels == [str(i) for i in table["index"]] and series.tr is None
    frame, tr = check_series(series, path, table, ATLAS, repetition_time=1.5)
    np.testing.assert_array_equal(frame.to_numpy(), np.loadtxt(path))  # loadtxt skips the '#' header
    assert tr == 1.5
    with pytest.raises(InputError, match=r"rois_toy100.1D: no TR: neither a JSON sidecar .* nor "
                                         r"input.timeseries.repetition_time"):
        check_series(series, path, table, ATLAS)


def test_cpac_reader_takes_3droistats_headers_and_refuses_text(tmp_path):
    path = tmp_path / "x.1D"
    path.write_text("# /data/rest.nii.gz\n#\tMean_2\tMean_1\n1 2\n3 5\n4 4\n")
    series = read_series(path, "cpac")
    assert series.labels == ["2", "1"]
    frame, _ = check_series(series, path, atlas_table(2), ATLAS, 2.0)
    np.testing.assert_array_equal(frame.to_numpy(), [[2, 1], [5, 3], [4, 4]])  # columns in index order 1, 2
    path.write_text("#1 #2\n1 2\n3 oops\n")
    with pytest.raises(InputError, match=r"x.1D: line 3: not a row of numbers \('3 oops'\)"):
        read_series(path, "cpac")


def test_table_reader_npy_csv_and_its_sidecar(tmp_path):
    table = atlas_table(5)
    values = signals(3, n_time=8, n=5)
    npy = tmp_path / "sub-01_task-rest_timeseries.npy"
    np.save(npy, values)
    with pytest.raises(InputError, match=r"no JSON sidecar sub-01_task-rest_timeseries.json beside it: .* RepetitionTime"):
        read_series(npy, "table")
    npy.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 0.8, "Atlas": ATLAS}))
    frame, tr = check_series(read_series(npy, "table"), npy, table, ATLAS)
    np.testing.assert_array_equal(frame.to_numpy(), values)
    assert tr == 0.8
    csv = tmp_path / "sub-02_task-rest_timeseries.csv"
    pd.DataFrame(values, columns=table["index"]).to_csv(csv, index=False)  # a header of index numbers
    csv.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 0.8, "Atlas": "Schaefer100"}))
    with pytest.raises(InputError, match=r"sub-02_task-rest_timeseries.json: names atlas 'Schaefer100'; "
                                         r"input.timeseries.atlas is 'toy100'"):
        check_series(read_series(csv, "table"), csv, table, ATLAS)


@pytest.mark.parametrize("change, message", [
    (lambda v: v[:, :-1], r"99 regions \(columns\); atlas toy100 has 100 regions"),
    (lambda v: v[0], r"region time series must be 2-D \(volumes x regions\); got shape \(100,\)"),
    (lambda v: v[:2], r"2 volume\(s\); at least 3 are needed"),
    (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 205, np.inf, v),
     r"value inf in region 'Net6_R006' at volume 3: values must be finite"),
    (lambda v: v * np.nan, r"every region is n/a: no region has data"),
])
def test_bad_series_are_refused_naming_the_file(tmp_path, change, message):
    path = tmp_path / "sub-01_task-rest_timeseries.npy"
    np.save(path, change(signals(0)))
    path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 2.0, "Atlas": ATLAS}))
    with pytest.raises(InputError, match=f"{path.name}: {message}"):
        check_series(read_series(path, "table"), path, atlas_table(), ATLAS)


def test_labels_of_another_atlas_are_refused(tmp_path):
    path = tmp_path / "a.tsv"
    pd.DataFrame(signals(0, n=3), columns=["L1", "L2", "L3"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"a.tsv: region labels match neither the names nor the index numbers of atlas "
                                         r"toy100's table \(first unknown: \['L1', 'L2', 'L3'\]"):
        check_series(read_series(path, "xcpd"), path, atlas_table(3), ATLAS, 2.0)


# --------------------------------------------------------------------------- the atlas table


def test_centroids_equal_scipy_center_of_mass(tmp_path):
    from scipy.ndimage import center_of_mass

    rng = np.random.default_rng(0)
    labels = np.zeros((20, 24, 18), np.int16)
    for value in (1, 2, 5, 9):  # a few random blobs, label 5 in two pieces
        for _ in range(1 + (value == 5)):
            c = rng.integers(3, 15, 3)
            labels[c[0]:c[0] + 4, c[1]:c[1] + 3, c[2]:c[2] + 5] = value
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "atlas.nii.gz")
    pd.DataFrame({"index": [1, 2, 5, 9], "name": ["a", "b", "c", "d"]}).to_csv(tmp_path / "atlas.tsv", sep="\t", index=False)
    table = centroid_table(tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv")
    present = sorted(set(np.unique(labels)) - {0})
    ijk = np.array(center_of_mass(np.ones_like(labels), labels, present))
    expected = nib.affines.apply_affine(affine, ijk)
    assert table["name"].tolist() == ["a", "b", "c", "d"] and table["index"].tolist() == present
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), expected, atol=1e-9)


def test_coordinates_table_needs_names_and_coordinates(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"name": ["a", "b"], "x": [1, 2], "y": [3, 4]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"c.csv: an atlas coordinates table needs columns name, x, y, z .* it lacks \['z'\]"):
        coordinates_table(path)
    pd.DataFrame({"name": ["a", "b"], "x": [1, 2], "y": [3, 4], "z": [5, 6]}).to_csv(path, index=False)
    assert coordinates_table(path)["index"].tolist() == [1, 2]


# --------------------------------------------------------------------------- discovery and config


def section(root: Path, fmt: str, **extra) -> dict:
    return {"format": fmt, "dir": str(root), "atlas": ATLAS, "space": None, "participants": None, "task": "rest",
            **extra}


def test_discovery_of_xcpd_and_abide_names(tmp_path):
    table = atlas_table()
    write_xcpd(tmp_path / "xcpd", ["01", "02"], table)
    legacy = tmp_path / "xcpd" / "sub-03" / "ses-1" / "func"  # XCP-D 0.7-0.10 named the atlas seg-
    legacy.mkdir(parents=True)
    (legacy / f"sub-03_ses-1_task-rest_run-2_space-MNI152NLin6Asym_seg-{ATLAS}_stat-mean_timeseries.tsv").write_text("")
    found = find_inputs(section(tmp_path / "xcpd", "xcpd"))
    assert list(found.runs) == ["sub-01/func/sub-01_task-rest", "sub-02/func/sub-02_task-rest",
                                "sub-03/ses-1/func/sub-03_ses-1_task-rest_run-2"]
    assert found.participants == tmp_path / "xcpd" / "participants.tsv"
    assert list(find_inputs(section(tmp_path / "xcpd", "xcpd"), subjects=["02"]).runs) == ["sub-02/func/sub-02_task-rest"]

    write_cpac(tmp_path / "abide", ["0050002", "0051201"], table)
    (tmp_path / "abide" / "Pitt_0050003_rois_cc200.1D").write_text("")  # another atlas
    participants(["0050002"]).to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    found = find_inputs(section(tmp_path / "abide", "cpac", participants=str(tmp_path / "p.tsv")))
    assert list(found.runs) == ["sub-0050002/func/sub-0050002_task-rest", "sub-0051201/func/sub-0051201_task-rest"]
    with pytest.raises(InputError, match=r"participants.tsv: participants table not found: set input.timeseries.participants"):
        find_inputs(section(tmp_path / "abide", "cpac"))


def test_two_spaces_of_one_run_need_a_space(tmp_path):
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "participants.tsv").write_text("participant_id\nsub-01\n")
    for space in ("MNI152NLin6Asym", "fsLR"):
        (func / f"sub-01_task-rest_space-{space}_atlas-{ATLAS}_stat-mean_timeseries.tsv").write_text("")
    with pytest.raises(InputError, match=r"run sub-01/func/sub-01_task-rest has two files .* set input.timeseries.space"):
        find_inputs(section(tmp_path, "xcpd"))
    assert len(find_inputs(section(tmp_path, "xcpd", space="fsLR")).runs) == 1


def test_config_problems_name_the_keys():
    config = {"input": {"mode": "timeseries", "timeseries": {"dir": None, "atlas": "x", "coordinates": "c.tsv",
                                                             "labels_image": "a.nii.gz", "labels_table": None}},
              "voxel": {"enabled": True}}
    problems = config_problems(config)
    assert problems[0].startswith("input.timeseries.dir: null, but input.mode: timeseries needs it")
    assert "needs exactly one (a table of region names and MNI x, y, z, or a label image); got 2" in problems[1]
    assert problems[2].startswith("voxel.enabled: true needs 4-D BOLD")
    config["input"]["mode"] = "bids"
    assert config_problems(config) == []


# --------------------------------------------------------------------------- the DAG


def ts_config(data: Path, results: Path, fmt: str, coordinates: Path, **timeseries) -> dict:
    """The demo's recipe (config/demo.yaml) at test size, on region time series instead of raw BIDS."""
    return merged(demo_settings(), {
        "output_dir": str(results),
        "input": {"mode": "timeseries", "timeseries": {"format": fmt, "dir": str(data), "atlas": ATLAS,
                                                        "coordinates": str(coordinates), **timeseries}},
        "report": {"group_column": "response", "ground_truth": None},
        **{k: v for k, v in SHORT_RUNS.items() if k != "denoise"},
        "finetune": {"variants": ["concat", "ts_only"], "folds": 2, "max_epochs": 2, "min_epochs": 0, "patience": 1,
                     "permutations": 2, "resnet_width": 2, "embed_dim": 16, "bootstrap": 20, "ig_steps": 4,
                     "drug_column": None, "site_column": None, "setups": ["agnostic"]},
    })


SUBJECTS = [f"00500{k:02d}" for k in range(1, 11)]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["xcpd", "cpac"])
def test_dag_from_region_timeseries_to_the_report(tmp_path, fmt):
    table = atlas_table()
    data = tmp_path / "data"
    if fmt == "xcpd":
        files = write_xcpd(data, SUBJECTS, table)
        extra = {}
    else:
        files = write_cpac(data, SUBJECTS, table)
        participants(SUBJECTS).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
        extra = {"participants": str(tmp_path / "participants.tsv"), "repetition_time": 2.0}
    results = tmp_path / "results"
    config = ts_config(data, results, fmt, coordinates_file(tmp_path / "atlas", table), **extra)
    proc = run_snakemake(tmp_path, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "rule denoise" not in proc.stdout + proc.stderr and "rule bids:" not in proc.stdout + proc.stderr

    deriv = results / "fmriflow"
    for subject, source in files.items():
        relmat = deriv / f"sub-{subject}/func/sub-{subject}_task-rest_space-MNI152NLin6Asym_res-2_atlas-{ATLAS}" \
                         "_stat-pearsoncorrelation_relmat.tsv"
        fc = read_tsv(relmat, index_col=0)
        raw = (pd.read_csv(source, sep="\t", na_values="n/a").to_numpy() if fmt == "xcpd" else np.loadtxt(source))
        valid = np.isfinite(raw).all(axis=0)
        expected = np.full((N_REGIONS, N_REGIONS), np.nan)
        expected[np.ix_(valid, valid)] = np.corrcoef(raw[:, valid], rowvar=False)
        assert fc.index.tolist() == table["name"].tolist()
        np.testing.assert_allclose(fc.to_numpy(), expected, atol=1e-7)
        sidecar = json.loads(relmat.with_name(relmat.name.replace("stat-pearsoncorrelation_relmat.tsv",
                                                                   "stat-mean_timeseries.json")).read_text())
        assert sidecar["RepetitionTime"] == 2.0 and sidecar["Atlas"] == ATLAS and sidecar["NumberOfRegions"] == N_REGIONS
        assert sidecar["Provenance"]["Inputs"][0] == {"path": str(source), "sha256": sidecar["SourceSha256"]}

    lut = read_tsv(deriv / f"atlases/atlas-{ATLAS}/atlas-{ATLAS}_dseg.tsv")
    np.testing.assert_allclose(lut[["x", "y", "z"]].to_numpy(), table[["x", "y", "z"]].to_numpy())
    card = json.loads((results / "dataset" / f"atlas-{ATLAS}" / "dataset_card.json").read_text())
    assert card["n_regions"] == N_REGIONS
    assert (results / "pretrain" / "tiny" / "model.pt").is_file()
    variants = read_tsv(results / "finetune" / "response" / "variants.tsv")
    assert {"concat", "ts_only", "permuted_concat", "logistic", "ridge"} <= set(variants["variant"])
    assert set(variants["n_subjects"]) == {len(SUBJECTS)}

    html = (results / "report" / "fmriflow_report.html").read_text()
    assert f"Atlas: <code>{ATLAS}</code>, {N_REGIONS} regions" in html
    audit = subprocess.run([sys.executable, "-m", "fmriflow.cli", "audit", str(relmat)], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    assert f"{source}  [raw input] ok" in audit.stdout
