"""Released models' recipes (fmriflow.bundle.recipe_*), each against an independent computation:
NeuroSTORM's voxel recipe on a 91 x 109 x 91 run (time resampling against torch's interpolate,
the z-score and the 96^3 crop / pad written out here); the region normalisations against their
formulas; the plan-time atlas look-up and its error (the card, the atlas, the config key)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmriflow.bundle import recipe_plan, recipe_scaling, recipe_voxels
from fmriflow.errors import InputError

STORM_CARD = {"input": {"tr": {"target_tr": 0.8}}, "atlas": {"grid": {"shape": [96, 96, 96]}, "regions": []}}


def _run(seed=0, frames=5):
    rng = np.random.default_rng(seed)
    data = (rng.normal(500, 40, (91, 109, 91, frames))).astype(np.float32)
    mask = np.zeros((91, 109, 91), bool)
    mask[20:70, 15:95, 20:70] = True
    data[~mask] = 0.0
    data[30, 30, 30, 1] = 0.0  # a zero inside the mask is background too
    data[31, 30, 30, 2] = -5.0  # a negative value is set to 0 (and stays brain)
    return data, mask


def test_voxel_recipe_matches_interpolate_znorm_and_crop_pad(torch_one_thread):
    data, mask = _run()
    frames, info = recipe_voxels.prepare_run(data, mask, 2.0, STORM_CARD)
    n_out = round(5 * 2.0 / 0.8)  # 12 frames at 0.8 s
    resampled = torch.nn.functional.interpolate(torch.from_numpy(data.astype(np.float64)).reshape(-1, 1, 5),
                                                size=n_out, mode="linear", align_corners=False)
    resampled = resampled.reshape(91, 109, 91, n_out).numpy()
    brain = mask[..., None] & (resampled != 0)
    x = np.where(brain, np.clip(resampled, 0, None), 0.0)
    mean, std = x[brain].mean(), x[brain].std()
    z = np.where(brain, (x - mean) / std, ((x[brain] - mean) / std).min())
    want = np.empty((n_out, 96, 96, 96))
    for t in range(n_out):
        cropped = z[:, 6:102, :, t]  # y: 109 -> 96 from (109 - 96) // 2 = 6
        want[t] = np.pad(cropped, ((3, 2), (0, 0), (3, 2)), constant_values=z[0, 0, 0, t])  # 91 -> 96: 3 + 2
    assert frames.shape == (n_out, 96, 96, 96) and info["n_frames"] == n_out
    assert info["mean"] == pytest.approx(mean) and info["std"] == pytest.approx(std)
    np.testing.assert_allclose(frames, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert recipe_voxels.window_starts(n_out, 4, 4) == [0, 4, 8]
    assert recipe_voxels.window_starts(n_out, 4, 3, frame_step=2) == [0, 3]


def test_voxel_recipe_refuses_an_empty_brain():
    data, mask = _run(frames=3)
    with pytest.raises(ValueError, match="no brain voxel"):
        recipe_voxels.prepare_run(np.zeros_like(data), mask, 0.8, STORM_CARD)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_region_normalisations_follow_their_formulas():
    rng = np.random.default_rng(1)
    train = [rng.normal(3, 2, (50, 6)) for _ in range(3)]
    train[0][:, 5] = np.nan  # a region dropped in one run
    x = rng.normal(3, 2, (30, 6))
    x[:, 2] = np.nan
    stats = recipe_scaling.fit_statistics("robust", train, 40)
    flat = np.concatenate(train)
    q = np.nanpercentile(flat, [25, 50, 75], axis=0)
    np.testing.assert_allclose(stats["median"], q[1])
    want = ((x - q[1]) / (q[2] - q[0])).T
    want[2] = 0.0
    np.testing.assert_allclose(recipe_scaling.apply("robust", stats, x), want, rtol=1e-6, atol=1e-6)

    # BrainLM v1: mean-centred runs, statistics over their first `window` points, zeros out of the IQR;
    # then median / IQR is subtracted, nothing divided
    stats = recipe_scaling.fit_statistics("brainlm-v1", train, 40)
    centred = np.concatenate([(t - np.nanmean(t, axis=0))[:40] for t in train])
    median = np.nanmedian(centred, axis=0)
    iqr = np.nanpercentile(centred, 75, axis=0) - np.nanpercentile(centred, 25, axis=0)
    np.testing.assert_allclose(stats["median"], median)
    np.testing.assert_allclose(stats["iqr"], iqr)
    want = (x - np.nanmean(x, axis=0) - median / iqr).T
    want[2] = 0.0
    np.testing.assert_allclose(recipe_scaling.apply("brainlm-v1", stats, x), want, rtol=1e-5, atol=1e-6)

    stats = recipe_scaling.fit_statistics("brainlm-vitmae", train, 40, 5.6430855)
    lo, hi = np.nanmin(flat), np.nanmax(flat)
    want = ((x - lo) / (hi - lo) / 5.6430855).T
    want[2] = 0.0
    np.testing.assert_allclose(recipe_scaling.apply("brainlm-vitmae", stats, x), want, rtol=1e-5, atol=1e-7)


def test_card_atlas_is_found_among_the_project_atlases():
    card = {"atlas": {"name": "TianS3+Schaefer400-17n", "n_regions": 450, "regions": ["a"]}}
    found = recipe_plan.project_atlas(card, "c.json", "recipes.jepa", ["A424", "TianS3Schaefer40017n"])
    assert found == "TianS3Schaefer40017n"
    assert recipe_plan.project_atlas({"atlas": {"name": "A424", "n_regions": 424}}, "c", "k", ["A424"]) == "A424"
    with pytest.raises(InputError, match=r"model_card.json.*recipes\.jepa.*'TianS3\+Schaefer400-17n'.*atlas\.extra "
                                         r"as 'TianS3Schaefer40017n'"):
        recipe_plan.project_atlas(card, "bundle/model_card.json", "recipes.jepa", ["A424"])
    assert recipe_plan.recipe_kind({"atlas": {"grid": {"shape": [96] * 3}, "regions": []}}) == "voxels"
    assert recipe_plan.recipe_kind(card) == "regions"


@pytest.mark.parametrize("slope,inter", [(None, None), (0.37, 0.0), (0.37, 12.5)])
def test_voxel_recipe_memory_counts_the_run_as_it_is_loaded(tmp_path, slope, inter):
    """prepare_mem_mb for the voxel recipe: twice the run as the recipe step loads it (fmriflow.io.load_nifti,
    as recipe_step does: an int16 run with scl_slope/scl_inter comes back as floats, more bytes than stored)
    plus its frames, round(T * TR / target) volumes of the card's grid as float32."""
    import math

    import nibabel as nib
    import pandas as pd

    from fmriflow.io import load_nifti

    shape, tr = (40, 40, 40, 10), 2.0
    data = np.random.default_rng(0).integers(-3000, 3000, shape, dtype=np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_dtype(np.int16)
    img.header.set_zooms((2.0, 2.0, 2.0, tr))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, tmp_path / "sub-01_bold.nii.gz")
    pd.DataFrame({"run": ["sub-01"], "role": ["bold"], "path": ["sub-01_bold.nii.gz"]}).to_csv(
        tmp_path / "runs.tsv", sep="\t", index=False)
    card = {"input": {"tr": {"target_tr": 0.8}}, "atlas": {"grid": {"shape": [24, 24, 24]}, "regions": []}}

    loaded = np.asanyarray(load_nifti(tmp_path / "sub-01_bold.nii.gz").dataobj)
    assert (loaded.dtype == np.int16) == (slope is None)  # the scaled runs are held as floats
    frames = 25 * 24**3 * 4  # 10 volumes at 2 s are 25 frames at 0.8 s
    want = recipe_plan.BASE_MB + math.ceil((2 * loaded.nbytes + frames) / 1e6)
    assert recipe_plan.prepare_mem_mb("voxels", str(tmp_path / "runs.tsv"), card) == want


def test_voxel_recipe_memory_names_a_run_whose_data_cannot_be_read(tmp_path):
    """A run whose header reads but whose data stop after it (a truncated copy) is an InputError naming the file
    when its job is sized, not a bare nibabel error."""
    import nibabel as nib
    import pandas as pd

    from fmriflow.errors import InputError

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), tmp_path / "sub-01_bold.nii")
    whole = (tmp_path / "sub-01_bold.nii").read_bytes()
    (tmp_path / "sub-01_bold.nii").write_bytes(whole[:352])  # the header and its extension flag, no data
    pd.DataFrame({"run": ["sub-01"], "role": ["bold"], "path": ["sub-01_bold.nii"]}).to_csv(
        tmp_path / "runs.tsv", sep="\t", index=False)
    card = {"input": {"tr": {"target_tr": 0.8}}, "atlas": {"grid": {"shape": [4, 4, 4]}, "regions": []}}
    with pytest.raises(InputError, match=r"sub-01_bold\.nii: its first voxel could not be read"):
        recipe_plan.prepare_mem_mb("voxels", str(tmp_path / "runs.tsv"), card)


@pytest.mark.parametrize("bad", ["nan", "text"])
def test_region_runs_are_checked_like_the_dataset_steps(tmp_path, bad):
    """A region with a gap (NaN amid values) or text is an error naming the file, as the dataset step's
    (resampling would spread the gap over the whole series); a region that is all NaN is dropped."""
    import json

    import pandas as pd

    from fmriflow.bundle import recipe_step

    labels = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"]}).to_csv(labels, sep="\t", index=False)
    series = pd.DataFrame({"c": np.arange(6.0), "a": np.ones(6), "b": np.full(6, np.nan)})
    path = tmp_path / "sub-01_timeseries.tsv"
    (tmp_path / "sub-01_timeseries.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    card = {"atlas": {"regions": ["a", "b", "c"]}}
    series.to_csv(path, sep="\t", index=False, na_rep="n/a")
    (run,) = recipe_step._region_runs(card, "card.json", str(labels), ["sub-01"], [str(path)], None)
    assert np.isnan(run["x"][:, 1]).all() and (run["x"][:, [0, 2]] == series[["a", "c"]].to_numpy()).all()
    series["c"] = series["c"].astype(object)
    series.loc[3, "c"] = np.nan if bad == "nan" else "x"
    series.to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError, match="column 'c'") as err:
        recipe_step._region_runs(card, "card.json", str(labels), ["sub-01"], [str(path)], None)
    assert str(path) in str(err.value)


def test_recipe_embeddings_pair_with_the_dataset_windows_by_time():
    """Each dataset window gets the mean of the recipe windows of its run weighted by the seconds they share,
    the nearest recipe window (centre to centre) where none overlaps, nothing for a run the recipe skipped:
    checked against a loop over every pair written out here."""
    import pandas as pd

    from fmriflow.finetune.recipe_fusion import aligned

    rng = np.random.default_rng(5)
    theirs = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 2, "onset": [0.0, 29.4, 58.8, 88.2, 0.0, 29.4],
                           "duration": [29.4] * 6})
    embeddings = rng.normal(size=(6, 3)).astype(np.float32)
    ours = pd.DataFrame({"run": ["a", "a", "a", "b", "b", "c"], "onset": [0.0, 40.0, 120.0, 10.0, 70.0, 0.0],
                         "duration": [40.0, 40.0, 10.0, 40.0, 40.0, 40.0]})
    got, valid = aligned(ours, embeddings, theirs)
    want = np.zeros((len(ours), 3))
    for i, w in ours.iterrows():
        rows = theirs[theirs["run"] == w["run"]]
        if rows.empty:
            continue
        shared = [max(0.0, min(w.onset + w.duration, r.onset + r.duration) - max(w.onset, r.onset))
                  for r in rows.itertuples()]
        if sum(shared) == 0:
            centre = w.onset + w.duration / 2
            shared = [0.0] * len(rows)
            shared[int(np.argmin([abs(r.onset + r.duration / 2 - centre) for r in rows.itertuples()]))] = 1.0
        want[i] = np.average(embeddings[rows.index].astype(np.float64), axis=0, weights=shared)
    assert valid.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # the window at 0-40 s shares 29.4 s with the first recipe window and 10.6 s with the second
    np.testing.assert_allclose(got[0], (29.4 * embeddings[0] + 10.6 * embeddings[1]) / 40, rtol=1e-5)
    np.testing.assert_allclose(got[2], embeddings[3], rtol=1e-6)  # 120-130 s: past every window, the last is nearest
    np.testing.assert_allclose(got[4], embeddings[5], rtol=1e-6)  # 70-110 s of run b: after both, the second


def test_recipe_fold_keeps_the_windows_and_subjects_the_recipe_has():
    """A recipe's variants fit and score only the fold's windows with recipe embeddings (a run it gave no
    window has none) and only the subjects with any; a fold left without validation windows is skipped."""
    from types import SimpleNamespace

    from fmriflow.finetune.crossval import Fold, recipe_fold
    from fmriflow.finetune.recipe_fusion import RecipeFeatures

    rows_of = {"a": np.array([0, 1]), "b": np.array([2, 3]), "c": np.array([4, 5]), "d": np.array([6])}
    valid = np.array([True, False, True, True, False, True, False])  # d's only run: no recipe window
    inputs = SimpleNamespace(rows_of=rows_of, recipes={"v1": RecipeFeatures({}, valid)})

    def fold(fit, val, test):
        cat = lambda subjects: np.concatenate([rows_of[s] for s in subjects])  # noqa: E731
        return Fold("agnostic", 0, 1, 0, sorted(set(fit + val)), test, fit, val, cat(fit), cat(val), cat(test),
                    np.concatenate([[s] * len(rows_of[s]) for s in test]), 0.0)

    part = recipe_fold(fold(["a", "d"], ["b"], ["c"]), inputs, "v1")
    assert part.fit_rows.tolist() == [0] and part.val_rows.tolist() == [2, 3] and part.test_rows.tolist() == [5]
    assert part.fit == ["a"] and part.train == ["a", "b"] and part.test == ["c"] and part.test_subject.tolist() == ["c"]
    assert recipe_fold(fold(["a", "b"], ["d"], ["c"]), inputs, "v1") is None


def test_voxel_recipe_windows_are_timed_on_the_denoised_clock(tmp_path, monkeypatch):
    """The voxel recipe cuts its windows from raw volume 0 of the preprocessed BOLD; the dataset's windows
    count from the denoised series' first volume (dummy and censored volumes dropped). index.tsv and
    windows.tsv hold both clocks: the mapped onset is the kept volumes before the raw onset, times TR,
    counted here volume by volume; a run whose denoising kept "all" keeps its raw times."""
    import json

    import nibabel as nib
    import pandas as pd

    from fmriflow.bundle import recipe_step
    from fmriflow.finetune.recipe_probe import window_times

    card = {"model": {"name": "toy", "architecture": "neurostorm"}, "preprocessing": {},
            "input": {"window": 5, "stride": 5, "frame_step": 1, "tr": {"target_tr": 0.8}},
            "scaling": {"method": "znorm"}, "atlas": {"name": "MNI", "n_regions": None, "grid": {"shape": [6, 6, 6]},
                                                      "regions": []}}
    card_path = tmp_path / "model_card.json"
    card_path.write_text(json.dumps(card))
    monkeypatch.setattr(recipe_step, "read_card", lambda path: card)
    rng = np.random.default_rng(3)
    kept = {"sub-01_run-1": [2, 3, 4, 6, 7, 8, 9], "sub-02_run-1": "all"}  # sub-01: 2 dummies, volume 5 censored
    bolds, masks, denoised = [], [], []
    for run, output in kept.items():
        img = nib.Nifti1Image(rng.normal(100, 5, (6, 6, 6, 10)).astype(np.float32), np.eye(4))
        img.header.set_zooms((1.0, 1.0, 1.0, 2.0))
        bolds.append(str(tmp_path / f"{run}_bold.nii.gz"))
        nib.save(img, bolds[-1])
        masks.append(str(tmp_path / f"{run}_mask.nii.gz"))
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4)), masks[-1])
        denoised.append(str(tmp_path / f"{run}_desc-denoised_bold.nii.gz"))
        (tmp_path / f"{run}_desc-denoised_bold.json").write_text(
            json.dumps({"Provenance": {"Parameters": {"OutputVolumes": output}}}))
    pd.DataFrame({"subject": ["01", "02"], "split": ["train", "test"]}).to_csv(tmp_path / "splits.tsv", sep="\t",
                                                                               index=False)
    out = tmp_path / "prepared"
    recipe_step.prepare_voxels_step(str(card_path), list(kept), bolds, masks, str(tmp_path / "splits.tsv"),
                                    str(out), denoised)
    index = pd.read_csv(out / "index.tsv", sep="\t", dtype={"run": str})
    # 10 volumes at 2 s -> 25 frames at 0.8 s: windows of 5 frames (4 s) at frames 0, 5, 10, 15, 20
    assert index["onset_raw"].tolist() == pytest.approx([0, 4, 8, 12, 16] * 2)
    assert index["duration_raw"].tolist() == pytest.approx([4.0] * 10)
    for row in index.itertuples():
        volumes = range(10) if kept[row.run] == "all" else kept[row.run]
        before = lambda t: sum(1 for v in volumes if v * 2.0 < t - 1e-9)  # noqa: E731
        assert row.onset == pytest.approx(before(row.onset_raw) * 2.0)
        assert row.duration == pytest.approx((before(row.onset_raw + row.duration_raw) - before(row.onset_raw)) * 2.0)
    first = index[index["run"] == "sub-01_run-1"]
    # raw 8 s: kept volumes 2, 3 before it -> 4 s; raw 16-20 s: 2, 3, 4, 6, 7 before 16 s, + 8, 9 before 20 s
    assert first["onset"].tolist() == pytest.approx([0, 0, 4, 6, 10])
    assert first["duration"].tolist() == pytest.approx([0, 4, 2, 4, 4])
    second = index[index["run"] == "sub-02_run-1"]
    assert second["onset"].tolist() == pytest.approx(second["onset_raw"].tolist())
    onset, duration = window_times(index, {"applied": {"window": 5}})
    np.testing.assert_allclose(onset, index["onset"]) and np.testing.assert_allclose(duration, index["duration"])


def _embedded(folder, table, rows):
    """An embedding step's folder: ``rows`` embeddings beside ``table`` (windows.tsv)."""
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", np.arange(rows * 2, dtype=np.float32).reshape(rows, 2))
    table.to_csv(folder / "windows.tsv", sep="\t", index=False)
    return folder


def test_recipe_embeddings_from_another_run_are_refused(tmp_path):
    """A windows.tsv with other rows than embeddings.npy, or without the windows' times (written before
    they were recorded), names the file and the rerun; pretrained and random folders on different windows
    name both folders. Folders that agree load, each dataset window weighted by the seconds it shares."""
    import pandas as pd

    from fmriflow.finetune.recipe_fusion import load_recipe_features
    from fmriflow.finetune.recipe_probe import read_embeddings

    table = pd.DataFrame({"sample": [0, 1], "subject": ["01", "01"], "run": ["r1", "r1"], "onset": [0.0, 10.0],
                          "duration": [10.0, 10.0]})
    short = _embedded(tmp_path / "short", table, 3)
    with pytest.raises(InputError, match="2 windows but .* holds 3 embeddings: rerun recipe_embed") as err:
        read_embeddings(short)
    assert str(short / "windows.tsv") in str(err.value)
    old = _embedded(tmp_path / "old", table.drop(columns=["onset", "duration"]), 2)
    with pytest.raises(InputError, match=r"lacks the column\(s\) \['onset', 'duration'\].*rerun recipe_embed"):
        read_embeddings(old)
    good = _embedded(tmp_path / "good", table, 2)
    other = _embedded(tmp_path / "other", table.assign(onset=[0.0, 12.0]), 2)
    index = pd.DataFrame({"sample": [7], "run": ["r1"], "subject": ["01"], "start_tr": [2], "tr": [2.0]})
    with pytest.raises(InputError, match="rerun recipe_embed and recipe_embed_random") as err:
        load_recipe_features({"v1": {"pretrained": good, "random": other}}, index, np.array([7]), 5)
    assert str(good) in str(err.value) and str(other) in str(err.value)
    got = load_recipe_features({"v1": {"pretrained": good, "random": good}}, index, np.array([7]), 5)["v1"]
    # the dataset window 4-14 s shares 6 s with the window at 0-10 s and 4 s with the one at 10-20 s
    np.testing.assert_allclose(got.ts["pretrained"][0], (6 * np.array([0, 1]) + 4 * np.array([2, 3])) / 10)
    assert got.valid.tolist() == [True]


def test_recipe_variants_are_checked_against_the_ones_there_are(tmp_path):
    """An unknown finetune.recipe_variants entry is refused before any file is read, naming the allowed ones;
    the workflow schema allows exactly recipe_fusion.VARIANTS."""
    import yaml

    from fmriflow.errors import SettingError
    from fmriflow.finetune.crossval import load_inputs
    from fmriflow.finetune.recipe_fusion import VARIANTS
    from fmriflow.finetune.settings import FinetuneSettings

    settings = FinetuneSettings.from_config({"recipe_variants": ["concat", "fc_only"]})
    with pytest.raises(SettingError) as err:
        load_inputs(str(tmp_path / "none"), str(tmp_path / "none"), str(tmp_path / "none.tsv"), settings)
    assert str(err.value) == ("'recipe_variants' must be one of ('concat', 'sum', 'cross_attention', 'moe', "
                              "'ts_only', 'no_pretrain'); 'fc_only' was provided")
    assert err.value.settings == ("finetune.recipe_variants",)
    from pathlib import Path

    with open(Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml") as fh:
        schema = yaml.safe_load(fh)
    enum = schema["properties"]["finetune"]["properties"]["recipe_variants"]["items"]["enum"]
    assert tuple(enum) == VARIANTS
