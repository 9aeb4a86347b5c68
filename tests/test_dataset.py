"""fmriflow.datasets.regions: subject-level splits, robust scaling fitted on training subjects,
windows on disk checked against numpy slices of the input TSVs, resampling, streaming,
atomic and byte-identical builds, and the PyTorch Dataset under DataLoader workers."""

from __future__ import annotations

import pickle
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmriflow.datasets.regions as dataset_module
from fmriflow.datasets.regions import (
    RegionWindowDataset,
    build_dataset,
    load_card,
    make_splits,
    read_index,
    scaling,
)
from fmriflow.datasets.participants import subject_labels
from fmriflow.errors import InputError
from fmriflow.io import write_tsv

REGIONS = [f"A424_{i:03d}" for i in range(1, 425)]


def _series(n_time, n_regions=len(REGIONS), seed=0, dropped=(), scale=1.0):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n_time, n_regions)) * scale * rng.uniform(0.5, 3, n_regions) + rng.normal(0, 5, n_regions)
    frame = pd.DataFrame(values, columns=REGIONS[:n_regions])
    for region in dropped:
        frame.iloc[:, region] = np.nan
    return frame


def _write_runs(folder: Path, lengths: dict[str, int], n_regions=len(REGIONS), tr=2.0, dropped=None):
    """One TSV per subject (lengths: subject -> time points); returns the run specs."""
    runs = []
    for number, (subject, n_time) in enumerate(sorted(lengths.items())):
        key = f"sub-{subject}/func/sub-{subject}_task-rest"
        path = folder / f"sub-{subject}_task-rest_timeseries.tsv"
        write_tsv(path, _series(n_time, n_regions, seed=number, dropped=(dropped or {}).get(subject, ())))
        runs.append({"run": key, "subject": subject, "tr": tr, "timeseries": path})
    return runs


def _read(path) -> np.ndarray:
    """The TSV's values, read independently of the product (time x regions)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False).to_numpy(dtype=np.float64)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """10 subjects x 1 run, 424 regions, dropped regions in a training and a test run, one short run.

    Shared by the tests of this file: they must not modify these TSVs.
    """
    subjects = [f"{i:02d}" for i in range(1, 11)]
    splits = pd.DataFrame({"subject": subjects, "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 2})
    lengths = {s: 130 for s in subjects} | {"04": 25}  # sub-04 (train) is shorter than a window
    runs = _write_runs(tmp_path_factory.mktemp("runs"), lengths, dropped={"02": [7, 300], "09": [11]})
    return runs, splits


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [3, 4, 5, 11, 37])
def test_splits_partition_subjects_nonempty_and_deterministic(n):
    subjects = [f"sub-{i:03d}" for i in range(n)]
    splits = make_splits(subjects, seed=3)
    assert sorted(splits["subject"]) == [s.removeprefix("sub-") for s in subjects]
    assert not splits["subject"].duplicated().any()
    assert set(splits["split"]) == {"train", "val", "test"}
    pd.testing.assert_frame_equal(splits, make_splits(list(reversed(subjects)) + subjects[:2], seed=3))
    sizes = splits["split"].value_counts()
    if n >= 10:
        assert abs(sizes["train"] - 0.8 * n) < 1


def test_splits_depend_on_seed():
    subjects = [f"{i:02d}" for i in range(40)]
    assert not make_splits(subjects, seed=0)["split"].equals(make_splits(subjects, seed=1)["split"])


def test_stratified_splits_keep_label_proportions(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["responder"] * 20 + ["non-responder"] * 13 + ["unknown-site"] * 7
    participants = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(40)],
                                 "response": rng.permutation(labels), "site": "a"})
    write_tsv(tmp_path / "participants.tsv", participants)
    strata = subject_labels(tmp_path / "participants.tsv", "response")
    for seed in range(5):
        splits = make_splits(participants["participant_id"], fractions=(0.6, 0.2, 0.2), seed=seed, stratify=strata)
        table = pd.crosstab(splits["stratum"], splits["split"])
        sizes = splits["split"].value_counts()
        for label, n_label in Counter(labels).items():
            for split in ("train", "val", "test"):
                expected = n_label * sizes[split] / len(splits)
                assert abs(table.loc[label, split] - expected) < 1, (seed, label, split)


def test_split_arguments_are_checked():
    with pytest.raises(ValueError, match="fractions"):
        make_splits(["01", "02", "03"], fractions=(0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="no stratification label"):
        make_splits(["01", "02", "03"], stratify={"01": "a", "02": "b"})


# --------------------------------------------------------------------------- contents


def test_windows_are_scaled_slices_of_the_input(small, tmp_path):
    runs, splits = small
    card = build_dataset(runs, splits, tmp_path / "ds", window=40, stride=30)
    samples = np.load(tmp_path / "ds" / "samples.npy")
    masks = np.load(tmp_path / "ds" / "region_mask.npy")
    index = read_index(tmp_path / "ds")

    # the scaling, computed here from the training rows only (runs that yield a window)
    train = {r["subject"] for r in runs} & set(splits.loc[splits["split"] == "train", "subject"])
    rows = np.concatenate([_read(r["timeseries"]) for r in runs if r["subject"] in train and r["subject"] != "04"])
    median = np.array([np.median(c[np.isfinite(c)]) for c in rows.T])
    iqr = np.array([np.percentile(c[np.isfinite(c)], 75) - np.percentile(c[np.isfinite(c)], 25) for c in rows.T])
    iqr[iqr == 0] = 1
    stored = scaling(tmp_path / "ds")
    assert list(stored["region"]) == REGIONS
    np.testing.assert_allclose(stored["median"], median, rtol=1e-8)
    np.testing.assert_allclose(stored["iqr"], iqr, rtol=1e-8)

    assert samples.shape == (len(index), len(REGIONS), 40) and samples.dtype == np.float32
    assert card["shapes"]["samples"] == list(samples.shape)
    source = {r["run"]: _read(r["timeseries"]) for r in runs}
    for row in index.itertuples():
        raw = source[row.run][row.start_tr:row.start_tr + 40]  # time x regions
        expected = ((raw - median) / iqr).T
        valid = np.isfinite(expected).all(axis=1)
        np.testing.assert_allclose(samples[row.sample][valid], expected[valid], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(masks[row.sample], valid)
        assert (samples[row.sample][~valid] == 0).all()
    # every window of every long run is there: starts 0, 30, 60, 90 of 130 time points
    assert index.groupby("run")["start_tr"].apply(list).map(tuple).unique().tolist() == [(0, 30, 60, 90)]
    dropped = index["subject"].isin(["02", "09"])
    assert (~masks[index.loc[dropped, "sample"]]).sum() == 3 * 4  # 2 + 1 regions x 4 windows
    assert masks[index.loc[~dropped, "sample"]].all()
    assert card["masked_region_samples"] == 12

    # subjects stay in their split; the card counts agree with the index
    assert (index.groupby("subject")["split"].nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert card["splits"][split]["samples"] == int((index["split"] == split).sum())
    assert card["splits"]["train"]["subjects"] == 5  # sub-04 has no window


def test_short_runs_are_listed_as_skipped(small, tmp_path):
    runs, splits = small
    card = build_dataset(runs, splits, tmp_path / "ds", window=40, stride=30)
    assert [(s["run"], s["n_timepoints"]) for s in card["skipped_runs"]] == [("sub-04/func/sub-04_task-rest", 25)]
    assert "fewer than one window of 40" in card["skipped_runs"][0]["reason"]
    assert "04" not in set(read_index(tmp_path / "ds")["subject"])
    assert load_card(tmp_path / "ds") == card


def test_scaling_is_fitted_on_training_subjects_only(small, tmp_path):
    runs, splits = small
    build_dataset(runs, splits, tmp_path / "a", window=40, stride=30)
    write_tsv(tmp_path / "other.tsv", _series(130, seed=99, scale=50.0))  # a very different test subject
    changed = [{**r, "timeseries": tmp_path / "other.tsv"} if r["subject"] == "10" else r for r in runs]
    build_dataset(changed, splits, tmp_path / "b", window=40, stride=30)
    assert (tmp_path / "a" / "scaling.tsv").read_bytes() == (tmp_path / "b" / "scaling.tsv").read_bytes()
    assert (tmp_path / "a" / "samples.npy").read_bytes() != (tmp_path / "b" / "samples.npy").read_bytes()


def test_min_coverage_regions_skips_runs(small, tmp_path):
    runs, splits = small
    card = build_dataset(runs, splits, tmp_path / "ds", window=40, stride=30, min_coverage_regions=423)
    reasons = {s["subject"]: s["reason"] for s in card["skipped_runs"]}
    assert set(reasons) == {"02", "04"} and "min_coverage_regions=423" in reasons["02"]


def test_resampling_to_target_tr(tmp_path):
    t = np.arange(100) * 2.0  # TR 2 s
    slow = np.sin(2 * np.pi * 0.02 * t)  # 0.02 Hz, far below both Nyquist frequencies
    frame = pd.DataFrame({"a": slow, "b": 3 + 2 * slow, "c": np.nan})
    frame2 = pd.DataFrame({"a": np.cos(np.arange(500) * 0.72 * 0.1), "b": np.arange(500.0), "c": np.nan})
    write_tsv(tmp_path / "r1.tsv", frame)
    write_tsv(tmp_path / "r2.tsv", frame2)
    runs = [{"run": "sub-01/func/sub-01_task-rest", "subject": "01", "tr": 2.0, "timeseries": tmp_path / "r1.tsv"},
            {"run": "sub-02/func/sub-02_task-rest", "subject": "02", "tr": 0.72, "timeseries": tmp_path / "r2.tsv"}]
    splits = pd.DataFrame({"subject": ["01", "02"], "split": ["train", "val"]})

    card = build_dataset(runs, splits, tmp_path / "fast", window=50, stride=50, target_tr=0.8)
    lengths = {r["run"]: r["n_timepoints"] for r in card["runs"]}
    assert lengths["sub-01/func/sub-01_task-rest"] == 250  # 100 x 2.0 / 0.8
    assert lengths["sub-02/func/sub-02_task-rest"] == 450  # 500 x 0.72 / 0.8
    index = read_index(tmp_path / "fast")
    assert index.groupby("run").size().tolist() == [5, 9]
    np.testing.assert_allclose(index["tr"], 0.8)
    assert card["tr"]["stored"] == [0.8]

    # the resampled sine follows the sine at the new times (away from the edges)
    x = np.load(tmp_path / "fast" / "samples.npy")[:5, 0].reshape(-1)  # region a of sub-01, 250 points
    med, iqr = scaling(tmp_path / "fast").loc[0, ["median", "iqr"]]
    np.testing.assert_allclose(x[20:-20] * iqr + med, np.sin(2 * np.pi * 0.02 * np.arange(250) * 0.8)[20:-20], atol=0.02)

    card = build_dataset(runs, splits, tmp_path / "slow", window=50, stride=50, target_tr=2.0)
    lengths = {r["run"]: r["n_timepoints"] for r in card["runs"]}
    assert lengths == {"sub-01/func/sub-01_task-rest": 100, "sub-02/func/sub-02_task-rest": 180}  # 500 x 9 / 25
    np.testing.assert_allclose(read_index(tmp_path / "slow")["tr"], 2.0)


# --------------------------------------------------------------------------- storage


def test_builder_streams_runs_into_a_memmap(tmp_path, monkeypatch):
    """62 MB of samples from 10 runs, built within a small peak of Python/numpy allocations.

    The scaling's training-data budget is cut to 1 MB so that it does not dominate; what
    remains is one run at a time, never the samples."""
    subjects = [f"{i:02d}" for i in range(10)]
    runs = _write_runs(tmp_path, {s: 200 for s in subjects})
    splits = make_splits(subjects, seed=0)
    opened = []

    def spy(path, *args, **kwargs):
        opened.append((Path(path).name, kwargs.get("shape")))
        return np.lib.format.open_memmap(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "open_memmap", spy)
    monkeypatch.setattr(dataset_module, "SCALING_BLOCK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        card = build_dataset(runs, splits, tmp_path / "ds", window=20, stride=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = card["n_samples"]
    assert n == 10 * 181
    size = n * len(REGIONS) * 20 * 4
    assert size > 60e6
    assert ("samples.npy", (n, len(REGIONS), 20)) in opened
    print(f"peak {peak / 1e6:.1f} MB")
    assert peak < size / 8, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB dataset"


def test_two_builds_are_byte_identical(small, tmp_path):
    runs, splits = small
    build_dataset(runs, splits, tmp_path / "a", window=40, stride=30, seed=0)
    build_dataset(list(reversed(runs)), splits, tmp_path / "b", window=40, stride=30, seed=0)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["dataset_card.json", "index.tsv", "region_mask.npy", "samples.npy", "scaling.tsv", "splits.tsv"]
    assert a == b


def test_failed_build_leaves_no_dataset(small, tmp_path, monkeypatch):
    runs, splits = small
    calls = []

    def fail_midway(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args)

    real = dataset_module._scale_run
    monkeypatch.setattr(dataset_module, "_scale_run", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(runs, splits, tmp_path / "out" / "ds", window=40, stride=30)
    assert list((tmp_path / "out").iterdir()) == []  # no dataset, no temporary folder left

    # a failed rebuild keeps the previous complete dataset; a successful one replaces it
    monkeypatch.setattr(dataset_module, "_scale_run", real)
    build_dataset(runs, splits, tmp_path / "out" / "ds", window=40, stride=30)
    before = _files(tmp_path / "out" / "ds")
    calls.clear()
    monkeypatch.setattr(dataset_module, "_scale_run", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(runs, splits, tmp_path / "out" / "ds", window=20, stride=20)
    assert _files(tmp_path / "out" / "ds") == before
    monkeypatch.setattr(dataset_module, "_scale_run", real)
    card = build_dataset(runs, splits, tmp_path / "out" / "ds", window=20, stride=20)
    assert card["window"] == 20 and [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]


# --------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_file(small, tmp_path):
    runs, splits = small
    bad = tmp_path / "bad.tsv"
    write_tsv(bad, _series(130, n_regions=423))
    with pytest.raises(InputError, match=r"bad\.tsv: 423 region columns, but .* has 424"):
        build_dataset([*runs[:2], {**runs[2], "timeseries": bad}], splits, tmp_path / "ds")

    frame = _series(130)
    frame.iloc[5, 17] = np.nan  # a hole in a region that is not dropped
    write_tsv(bad, frame)
    with pytest.raises(InputError, match=r"bad\.tsv: non-finite values in column 'A424_018' at time points \[5\]"):
        build_dataset([*runs[:2], {**runs[2], "timeseries": bad}], splits, tmp_path / "ds")

    with pytest.raises(InputError, match=r"sub-03_task-rest_timeseries\.tsv: subject '03' .* has no split"):
        build_dataset(runs, splits[splits["subject"] != "03"], tmp_path / "ds")

    with pytest.raises(InputError, match="more than once"):
        build_dataset(runs, pd.concat([splits, splits.iloc[:1].assign(split="test")]), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- torch


def test_dataset_with_dataloader_workers_and_distributed_sampler(small, tmp_path):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    runs, splits = small
    build_dataset(runs, splits, tmp_path / "ds", window=40, stride=30)
    ds = RegionWindowDataset(tmp_path / "ds", split="train")
    index = read_index(tmp_path / "ds")
    train_ids = index.loc[index["split"] == "train", "sample"].tolist()
    assert len(ds) == len(train_ids) == 20

    item = ds[0]
    assert item["x"].dtype == torch.float32 and item["x"].shape == (424, 40)
    assert item["region_mask"].dtype == torch.bool and item["index"] == train_ids[0]
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: no open memmap
    assert copy._arrays is None and len(copy) == len(ds)
    np.testing.assert_array_equal(copy[3]["x"].numpy(), ds[3]["x"].numpy())

    samples = np.load(tmp_path / "ds" / "samples.npy", mmap_mode="r")
    seen = []
    for batch in DataLoader(ds, batch_size=3, num_workers=2):
        assert batch["x"].shape[1:] == (424, 40) and batch["region_mask"].shape[1:] == (424,)
        np.testing.assert_array_equal(batch["x"].numpy(), samples[batch["index"].numpy()])
        seen += batch["index"].tolist()
    assert seen == train_ids

    shards = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
        shards.append([i for batch in loader for i in batch["index"].tolist()])
    assert len(shards[0]) == len(shards[1]) == 10
    assert sorted(shards[0] + shards[1]) == train_ids
    assert len(RegionWindowDataset(tmp_path / "ds", split=None)) == len(index)


# --------------------------------------------------------------------------- the workflow step


def _step_inputs(folder: Path, lengths: dict[str, int], tr=2.0):
    """Time series with their sidecars (the TR) and a participants table, as the dataset rule gives them."""
    from fmriflow.io import write_json
    from fmriflow.provenance import sidecar_path

    runs = _write_runs(folder, lengths, n_regions=8, tr=tr)
    for run in runs:
        write_json(sidecar_path(run["timeseries"]), {"RepetitionTime": tr})
    participants = folder / "participants.tsv"
    write_tsv(participants, pd.DataFrame({"participant_id": [f"sub-{s}" for s in sorted(lengths)],
                                          "response": ["0", "1"] * (len(lengths) // 2) + ["0"] * (len(lengths) % 2)}))
    return [r["run"] for r in runs], [str(r["timeseries"]) for r in runs], str(participants)


def test_dataset_step_errors_name_the_config_key(tmp_path):
    """An error caused by a dataset.* value names the key, its value and what is allowed; the library's
    own wording stays in the message."""
    from fmriflow.steps import dataset_step

    runs, series, participants = _step_inputs(tmp_path, {f"{k:02d}": 20 for k in range(1, 7)})
    out = tmp_path / "dataset" / "dataset_card.json"
    settings = {"window": 200, "stride": 200, "target_tr": None, "fractions": [0.6, 0.2, 0.2], "stratify": None, "seed": 0}
    with pytest.raises(InputError, match=r"no training run yields a window.*20 time points, fewer than one window of 200\)"
                                         r" \(dataset\.window is 200, allowed: an integer"):
        dataset_step(runs, series, participants, str(out), **settings)
    with pytest.raises(InputError, match=r"after resampling to TR 1\.0 s, fewer than one window of 200\).*"
                                         r"dataset\.window is 200, allowed: .*; dataset\.target_tr is 1\.0, allowed: "):
        dataset_step(runs, series, participants, str(out), **{**settings, "target_tr": 1.0})
    with pytest.raises(ValueError, match=r"'stride' must be a positive integer; 0 was provided \(dataset\.stride is 0, "
                                         r"allowed: an integer"):
        dataset_step(runs, series, participants, str(out), **{**settings, "window": 10, "stride": 0})
    with pytest.raises(ValueError, match=r"'fractions' must be .* summing to 1; \(0\.5, 0\.1, 0\.1\) was provided "
                                         r"\(dataset\.fractions is \[0\.5, 0\.1, 0\.1\], allowed: "):
        dataset_step(runs, series, participants, str(out), **{**settings, "window": 10, "fractions": [0.5, 0.1, 0.1]})
    with pytest.raises(InputError, match=r"participants table has no column 'site' .* \(dataset\.stratify is \"site\", "
                                         r"allowed: a column of participants\.tsv .* or null"):
        dataset_step(runs, series, participants, str(out), **{**settings, "window": 10, "stratify": "site"})
    assert not out.parent.exists()
    dataset_step(runs, series, participants, str(out), **{**settings, "window": 10, "stratify": "response"})
    assert load_card(out.parent)["window"] == 10
