"""Released models on their authors' recipes, through the DAG: three bundles imported from random-weight
state dicts with the released names and shapes (BrainLM v1 at toy width, window 40; Brain-JEPA
imported against the pinned-atlas test doubles (its card names Schaefer400N17TianS3 and their regions),
then run on a 450-region test-double atlas of those names written here on the A424 grid and given
through atlas.extra under that name (the DAG runs in another process, where the pins are the real
ones), its regions listed in another order than the card's; NeuroSTORM fine-tuned, width 8 on a 24^3 grid), run on an
8-subject demo to the variants table and the report. Checked against independent computations: each
probe row's scores and AUROC (the bundle's encoder and its random-initialised control) refitted here
with scikit-learn from the embeddings the steps wrote; the control's embeddings against the bundle's
architecture built here at random (the same seed) on the same windows; the recipe's FMMTC variants'
time-series branch against the recipe embeddings paired in time with the dataset's windows here (a loop
over the windows' seconds), and the written concat_<name> scores against a fit on it; the prepared
windows of one subject (resampled with scipy, scaled by the recipe's formula) and of one run of voxels
(interpolated with torch, z-scored and cropped here). A new finetune.seed reruns the random control's
embedding, not the bundle's."""

from __future__ import annotations

import json
import os
import time
import warnings
from fractions import Fraction

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.signal import resample_poly
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmriflow import naming

from test_atlas_pinned import CTX17_NAMES, TIAN_NAMES, doubles, pin_to_doubles  # noqa: F401 - a fixture
from test_import_checkpoint import (STORM_TOY, V1_TOY, random_state, released_jepa_shapes, released_neurostorm_shapes,
                                    released_v1_shapes)
from test_workflow import demo_config, make_demo, run_snakemake

pytestmark = pytest.mark.integration

JEPA_ATLAS = "Schaefer400N17TianS3"  # the card's atlas: a pinned one (fmriflow.atlas_pinned)
JEPA_REGIONS = TIAN_NAMES + CTX17_NAMES  # the pinned doubles' table, which the import reads
NAMES = ("v1", "jepa", "storm")


def double_atlas(folder, a424: nib.Nifti1Image) -> dict:
    """Test double of Schaefer-400 + Tian S3: A424's brain voxels cut into 450 runs of consecutive voxels,
    labelled Schaefer first (1..400), then Tian (401..450): the card lists Tian first."""
    inside = np.flatnonzero(np.rint(np.asarray(a424.dataobj)).ravel() > 0)
    labels = np.zeros(a424.shape, np.int16).ravel()
    labels[inside] = 1 + np.arange(len(inside)) * 450 // len(inside)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.reshape(a424.shape), a424.affine), folder / "double.nii.gz")
    names = JEPA_REGIONS[50:] + JEPA_REGIONS[:50]
    pd.DataFrame({"index": np.arange(1, 451), "name": names}).to_csv(folder / "double.tsv", sep="\t", index=False)
    return {"image": str(folder / "double.nii.gz"), "labels": str(folder / "double.tsv")}


def import_bundles(base, atlas_dir, doubles_dir) -> dict:
    from fmriflow.bundle.imports import import_checkpoint

    (base / "v1").mkdir()
    (base / "v1" / "config.json").write_text(json.dumps(V1_TOY))
    torch.save(random_state(released_v1_shapes(V1_TOY), seed=1), base / "v1" / "pytorch_model.bin")
    jepa = released_jepa_shapes(hidden=64, layers=1, patch=8, regions=450, frames=16, gradient_dims=4)
    torch.save({"target_encoder": random_state(jepa, seed=2), "epoch": 300}, base / "jepa.pth.tar")
    np.savetxt(base / "gradient_mapping_450.csv", np.random.default_rng(3).normal(size=(450, 4)), delimiter=",")
    torch.save({"state_dict": random_state(released_neurostorm_shapes(STORM_TOY), seed=4),
                "hyper_parameters": dict(STORM_TOY)}, base / "storm.ckpt")
    sources = {"v1": ("brainlm-v1", base / "v1"), "jepa": ("brain-jepa", base / "jepa.pth.tar"),
               "storm": ("neurostorm", base / "storm.ckpt")}
    with pytest.MonkeyPatch.context() as mp:
        pin_to_doubles(mp, doubles_dir)
        for name, (kind, path) in sources.items():
            import_checkpoint(kind, path, base / "bundles" / name, atlas_cache=base / "cache" / "A424",
                              pinned_cache=base / "cache", atlas_dir=doubles_dir if kind == "brain-jepa" else atlas_dir)
    return {name: str(base / "bundles" / name) for name in sources}


@pytest.fixture(scope="module")
def recipe_project(tmp_path_factory, atlas_dir, a424_img, doubles):
    """The 8-subject demo (4 responders), the three imported bundles and the config naming them: the
    agnostic set-up, 2 folds, no deep variant on this project's encoder; on each recipe's, concat and
    ts_only (finetune.recipe_variants' default) at the demo config's toy size (2 epochs, ResNet width 2)."""
    base = tmp_path_factory.mktemp("recipes")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=8, n_trs=60, seed=41)
    config = demo_config(demo, base / "results", recipes=import_bundles(base, atlas_dir, doubles["dir"]))
    config["atlas"] = {**config.get("atlas", {}), "extra": {JEPA_ATLAS: double_atlas(base / "atlas", a424_img)}}
    config["finetune"].update(variants=[], setups=["agnostic"], attribution=False, permutations=2, bootstrap=50)
    return base, demo, config


@pytest.fixture(scope="module")
def recipe_run(recipe_project):
    base, demo, config = recipe_project
    results = base / "results"
    started = time.monotonic()
    proc = run_snakemake(base, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    print(f"recipe DAG run: {time.monotonic() - started:.0f} s")
    return demo, results, config


def _read(path, **kw):
    return pd.read_csv(path, sep="\t", dtype={"subject": str, "run": str}, **kw)


def test_plan_and_its_errors(recipe_project, tmp_path):
    """Without recipes no recipe job (the demo's DAG is unchanged); with them one prepare and one embed job
    each; a card atlas the project does not parcellate, recipes without fine-tuning and a name that is
    another row's are refused at plan time, naming the key."""
    from test_workflow import planned_jobs

    _, demo, config = recipe_project
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, tmp_path / "results"), "--dry-run"))
    assert "recipe_prepare" not in off and "recipe_embed" not in off
    # planning imports no torch (each plan, and each cluster job's re-parse, would pay for it): here a torch
    # package that refuses to load stands first on the path
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("planning imported torch")\n')
    path = [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = run_snakemake(tmp_path, config, "--dry-run", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    on = planned_jobs(proc)
    assert on["recipe_prepare"] == 3 and on["recipe_embed"] == 3 and on["recipe_embed_random"] == 3
    assert on["finetune"] == 1
    missing = {**config, "atlas": {k: v for k, v in config["atlas"].items() if k != "extra"}}
    proc = run_snakemake(tmp_path, missing, "--dry-run")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "recipes.jepa" in text and f"'{JEPA_ATLAS}'" in text
    assert "model_card.json" in text and f"atlas.extra as '{JEPA_ATLAS}'" in text and "atlas.pinned" in text
    # the card's atlas is a pinned one: naming it under atlas.pinned plans the recipe without atlas.extra
    pinned = {**missing, "atlas": {**missing["atlas"], "pinned": [JEPA_ATLAS]}}
    planned = planned_jobs(run_snakemake(tmp_path, pinned, "--dry-run"))
    assert planned["recipe_prepare"] == 3 and planned["pinned_atlas"] == 1
    proc = run_snakemake(tmp_path, {**config, "finetune": {**config["finetune"], "enabled": False}}, "--dry-run")
    assert proc.returncode != 0 and "set finetune.enabled: true" in proc.stdout + proc.stderr
    proc = run_snakemake(tmp_path, {**config, "recipes": {"random": config["recipes"]["v1"]}}, "--dry-run")
    assert proc.returncode != 0 and "random" in proc.stdout + proc.stderr


def _subject_means(folder) -> dict[str, np.ndarray]:
    """Each subject's mean embedding over its windows, from the files the embedding step wrote."""
    embeddings, windows = np.load(folder / "embeddings.npy"), _read(folder / "windows.tsv")
    return {s: embeddings[g.index.to_numpy()].astype(np.float64).mean(axis=0) for s, g in windows.groupby("subject")}


def test_probe_rows_match_scikit_learn_on_the_written_embeddings(recipe_run):
    _, results, _ = recipe_run
    setup = results / "finetune" / "response" / "setup-agnostic"
    table = _read(results / "finetune" / "response" / "variants.tsv").set_index("variant")
    preds, logs, folds = _read(setup / "predictions.tsv"), _read(setup / "training_log.tsv"), _read(setup / "folds.tsv")
    for name, folder, row in [(n, f, r) for n in NAMES for f, r in (("embeddings", f"probe_{n}"),
                                                                     ("embeddings-random", f"probe_random_{n}"))]:
        means = _subject_means(results / "recipes" / name / folder)
        ours = preds[preds["variant"] == row]
        labels = ours.set_index("subject")["label"]
        assert len(ours) == 8 and set(ours["subject"]) == set(means)
        reference = []
        for fold, test in ours.groupby("fold"):
            roles = folds[(folds["repeat"] == 0) & (folds["fold"] == fold)]
            train = sorted(set(roles.loc[roles["role"] != "test", "subject"]))
            c = logs[(logs["variant"] == row) & (logs["fold"] == fold)]["C"].iloc[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=100_000, tol=1e-10))
                model.fit(np.stack([means[s] for s in train]), labels.loc[train].to_numpy())
            scores = model.predict_proba(np.stack([means[s] for s in test["subject"]]))[:, 1]
            np.testing.assert_allclose(test["score"], scores, atol=1e-3)
            reference.append(pd.DataFrame({"label": test["label"].to_numpy(), "score": scores}))
        reference = pd.concat(reference)
        assert table.loc[row, "auroc_pooled"] == pytest.approx(roc_auc_score(reference["label"], reference["score"]),
                                                               abs=1e-9)
        control = preds[preds["variant"] == f"permuted_{row}"]
        assert table.loc[f"permuted_{row}", "n_subjects"] == 8 and control["permutation"].nunique() == 2
        # the same subject folds as the FC baselines
        base = preds[preds["variant"] == "logistic"].set_index("subject")["fold"].sort_index()
        pd.testing.assert_series_equal(ours.set_index("subject")["fold"].sort_index(), base)


def _region_recipe(results, card, atlas: str, train: set[str]) -> dict[str, np.ndarray]:
    """Subject -> its run resampled with scipy to the card's TR and scaled by the card's formula, (time, regions)."""
    ratio = Fraction(2.0 / card["input"]["tr"]["target_tr"]).limit_denominator(1000)
    runs = {}
    for path in sorted((results / "fmriflow").glob(f"sub-*/func/*_atlas-{atlas}_stat-mean_timeseries.tsv")):
        x = _read(path)[card["atlas"]["regions"]].to_numpy(dtype=np.float64)
        runs[path.name[4:6]] = resample_poly(x, ratio.numerator, ratio.denominator, axis=0, padtype="line")
    window = card["input"]["window"]
    if card["scaling"]["method"] == "robust":
        fit = np.concatenate([runs[s] for s in sorted(train)])
        q25, median, q75 = np.nanpercentile(fit, [25, 50, 75], axis=0)
        iqr = np.where(q75 - q25 == 0, 1.0, q75 - q25)
        scaled = {s: (x - median) / iqr for s, x in runs.items()}
    else:  # BrainLM v1: mean-centred runs, minus median / IQR (zeros out of the IQR)
        centred = {s: x - np.nanmean(x, axis=0) for s, x in runs.items()}
        fit = np.concatenate([centred[s][:window] for s in sorted(train)])
        nonzero = np.where(fit == 0, np.nan, fit)
        iqr = np.nanpercentile(nonzero, 75, axis=0) - np.nanpercentile(nonzero, 25, axis=0)
        scaled = {s: x - np.nanmedian(fit, axis=0) / np.where(iqr == 0, 1.0, iqr) for s, x in centred.items()}
    return {s: np.nan_to_num(x, nan=0.0) for s, x in scaled.items()}


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:All-NaN slice")
def test_prepared_region_windows_are_the_recipe_computed_here(recipe_run):
    _, results, config = recipe_run
    splits = _read(results / "dataset" / "atlas-A424" / "splits.tsv")
    train = set(splits.loc[splits["split"] == "train", "subject"])
    for name, atlas in (("jepa", JEPA_ATLAS), ("v1", "A424")):
        card = json.loads((results.parent / "bundles" / name / "model_card.json").read_text())
        prepared = results / "recipes" / name / "prepared"
        windows, index = np.load(prepared / "windows.npy"), _read(prepared / "index.tsv")
        want = _region_recipe(results, card, atlas, train)["01"]
        rows = index[index["subject"] == "01"].sort_values("start")
        window = card["input"]["window"]
        assert list(rows["start"]) == list(range(0, len(want) - window + 1, window)) and len(rows) > 0
        for row in rows.itertuples():
            np.testing.assert_allclose(windows[row.sample], want[row.start:row.start + window].T, rtol=1e-5, atol=1e-5)
        recipe = json.loads((prepared / "recipe.json").read_text())
        applied = recipe["applied"]
        assert applied["project_atlas"] == atlas and applied["target_tr"] == card["input"]["tr"]["target_tr"]
        assert recipe["applied"]["scaling"]["statistics_from"].startswith("refitted on this project's")
        assert json.loads((prepared / "windows.json").read_text())["Provenance"]["Step"] == "recipe_prepare"


def test_prepared_voxel_windows_are_the_recipe_computed_here(recipe_run):
    _, results, _ = recipe_run
    prepared = results / "recipes" / "storm" / "prepared"
    windows, index = np.load(prepared / "windows.npy", mmap_mode="r"), _read(prepared / "index.tsv")
    func = results / "fmriflow" / "sub-01" / "func"
    bold = nib.load(next(func.glob("*_desc-preproc_bold.nii.gz")))
    mask = np.asarray(nib.load(next(func.glob("*_desc-brain_mask.nii.gz"))).dataobj) > 0
    data = np.asarray(bold.dataobj, dtype=np.float64)
    n_out = round(data.shape[3] * float(bold.header.get_zooms()[3]) / 0.8)
    series = torch.nn.functional.interpolate(torch.from_numpy(data).reshape(-1, 1, data.shape[3]), size=n_out,
                                             mode="linear", align_corners=False).reshape(*data.shape[:3], n_out).numpy()
    brain = mask[..., None] & (series != 0)
    values = np.clip(series[brain], 0, None)
    box = (slice(33, 57), slice(42, 66), slice(33, 57))  # 91, 109, 91 -> 24^3 from (n - 24) // 2
    inner = np.clip(series[box], 0, None)
    del series, data  # the run at 0.8 s is 1 GB in float64
    mean, std = values.mean(), values.std()
    z = np.where(brain[box], (inner - mean) / std, (values.min() - mean) / std)
    cropped = np.moveaxis(z, -1, 0)
    rows = index[index["subject"] == "01"].sort_values("start")
    assert list(rows["start"]) == list(range(0, n_out - 3, 4))
    for row in rows.itertuples():
        np.testing.assert_allclose(windows[row.sample], cropped[row.start:row.start + 4], rtol=1e-5, atol=1e-5)


def test_report_shows_each_cards_recipe(recipe_run):
    _, results, config = recipe_run
    html = (results / "report" / "fmriflow_report.html").read_text()
    shown = html.split('id="recipes"')[1].split("</table>")[0]
    for name in NAMES:
        card = json.loads((results.parent / "bundles" / name / "model_card.json").read_text())
        assert f"<td>probe_{name}</td>" in shown
        assert card["scaling"]["method"].replace("'", "&#x27;") in shown
    assert f"{JEPA_ATLAS} (450 regions) as this project&#x27;s {JEPA_ATLAS}" in shown
    assert "cropped / padded to 24x24x24" in shown


def test_recipe_rows_join_the_variants_table(recipe_run):
    """Per recipe: its probe, the random-encoder control, the FMMTC variants of finetune.recipe_variants and
    concat's permuted control, each on every subject and the baselines' folds; the report lists them."""
    _, results, _ = recipe_run
    table = _read(results / "finetune" / "response" / "variants.tsv").set_index("variant")
    preds = _read(results / "finetune" / "response" / "setup-agnostic" / "predictions.tsv")
    folds = preds[preds["variant"] == "logistic"].set_index("subject")["fold"].sort_index()
    for name in NAMES:
        rows = [f"probe_{name}", f"probe_random_{name}", f"permuted_probe_random_{name}", f"concat_{name}",
                f"ts_only_{name}", f"permuted_concat_{name}"]
        assert table.loc[rows, "n_subjects"].tolist() == [8] * len(rows)
        # folds of a permuted control: each fold's permutations (2)
        assert table.loc[rows, "n_folds"].tolist() == [2, 2, 4, 2, 2, 4]
        assert preds.loc[preds["variant"] == f"permuted_concat_{name}", "permutation"].nunique() == 2
        for row in rows[:2] + rows[3:5]:
            ours = preds[preds["variant"] == row].set_index("subject")["fold"].sort_index()
            pd.testing.assert_series_equal(ours, folds)
        assert not any(v.startswith(("sum_", "moe_", "no_pretrain_", "fc_only_")) for v in table.index)
    shown = (results / "report" / "fmriflow_report.html").read_text().split('id="recipes"')[1].split("</table>")[0]
    assert "<td>probe_random_storm</td>" in shown and "<td>concat_storm, ts_only_storm</td>" in shown


def test_random_control_embeddings_are_a_random_model_of_the_same_seed(recipe_run, torch_one_thread):
    """The control's embeddings: the bundle's architecture, randomly initialised with finetune.seed, on the
    recipe's windows (encoded here in one batch); not the released weights' embeddings."""
    from fmriflow.bundle.read import load_bundle_encoder

    _, results, config = recipe_run
    seed = config["finetune"].get("seed", 0)
    for name in ("v1", "jepa"):  # the voxel model's windows are 37 a run at 24^3: its probe rows cover it
        windows = np.load(results / "recipes" / name / "prepared" / "windows.npy")
        written = np.load(results / "recipes" / name / "embeddings-random" / "embeddings.npy")
        model = load_bundle_encoder(results.parent / "bundles" / name, pretrained=False, seed=seed)
        with torch.no_grad():
            want = model.encode(torch.from_numpy(windows)).numpy()
        np.testing.assert_allclose(written, want, rtol=1e-4, atol=1e-5)
        pretrained = np.load(results / "recipes" / name / "embeddings" / "embeddings.npy")
        assert written.shape == pretrained.shape and not np.allclose(written, pretrained, atol=1e-3)
        other = load_bundle_encoder(results.parent / "bundles" / name, pretrained=False, seed=seed + 1)
        with torch.no_grad():
            assert not np.allclose(other.encode(torch.from_numpy(windows[:2])).numpy(), written[:2], atol=1e-3)


def _paired_here(results, name: str, samples: np.ndarray, folder: str = "embeddings") -> tuple[np.ndarray, list]:
    """The recipe's embeddings on the fine-tuning's rows, from the dataset's and the recipe's own index and
    window lengths: per dataset window, the recipe windows of its run weighted by the seconds they share."""
    index = _read(results / "dataset" / "atlas-A424" / "index.tsv").set_index("sample")
    window = np.load(results / "dataset" / "atlas-A424" / "samples.npy", mmap_mode="r").shape[2]
    card = json.loads((results.parent / "bundles" / name / "model_card.json").read_text())
    span = (card["input"]["window"] - 1) * card["input"].get("frame_step", 1) + 1
    prepared = _read(results / "recipes" / name / "prepared" / "index.tsv")
    embeddings = np.load(results / "recipes" / name / folder / "embeddings.npy")
    out, valid = np.zeros((len(samples), embeddings.shape[1])), []

    def clock(run):  # raw time (s from the preprocessed BOLD's volume 0) -> time on the denoised series
        if name != "storm":  # the region recipes read the dataset's own (denoised) series
            return lambda t: t
        path = results / "fmriflow" / naming.template_derivative(run, desc="denoised", suffix="bold", extension=".json")
        meta = json.loads(path.read_text())
        tr, kept = meta["RepetitionTime"], meta["Provenance"]["Parameters"]["OutputVolumes"]
        kept = range(meta["Provenance"]["Parameters"]["NumberOfVolumesIn"]) if kept == "all" else kept
        return lambda t: sum(1 for v in kept if v * tr < t - 1e-9) * tr  # the kept volumes before t

    for i, sample in enumerate(samples):
        w = index.loc[sample]
        a, b = w["start_tr"] * w["tr"], (w["start_tr"] + window) * w["tr"]
        total, weighted, on = 0.0, 0.0, clock(w["run"])
        for r in prepared[prepared["run"] == w["run"]].itertuples():
            shared = max(0.0, min(b, on((r.start + span) * r.tr)) - max(a, on(r.start * r.tr)))
            total, weighted = total + shared, weighted + shared * embeddings[r.sample].astype(np.float64)
        assert total > 0  # the demo's runs: every dataset window overlaps a recipe window
        out[i] = weighted / total
        valid.append(True)
    return out, valid


def test_recipe_variants_train_on_the_recipe_embeddings(recipe_run, torch_one_thread, monkeypatch):
    """concat_<name>'s time-series branch is the recipe's embeddings paired in time with the dataset's windows
    (computed here), no_pretrain's the random control's; concat_<name>'s written scores of the first fold are
    a fit on those features."""
    from fmriflow.finetune import cohort as cohorts
    from fmriflow.finetune import crossval
    from fmriflow.finetune.settings import FinetuneSettings

    demo, results, config = recipe_run
    settings = FinetuneSettings.from_config(config["finetune"])
    features = results / "finetune" / "response" / "features"
    dirs = {n: {"pretrained": str(results / "recipes" / n / "embeddings"),
                "random": str(results / "recipes" / n / "embeddings-random")} for n in NAMES}
    inputs = crossval.load_inputs(str(results / "dataset" / "atlas-A424"), str(features),
                                  str(demo / "bids" / "participants.tsv"), settings, recipe_dirs=dirs)
    for name in NAMES:
        want, valid = _paired_here(results, name, inputs.samples)
        assert inputs.recipes[name].valid.tolist() == valid
        np.testing.assert_allclose(inputs.recipes[name].ts["pretrained"], want, rtol=1e-5, atol=1e-6)
        random, _ = _paired_here(results, name, inputs.samples, "embeddings-random")
        np.testing.assert_allclose(inputs.recipes[name].ts["random"], random, rtol=1e-5, atol=1e-6)
    # the unit that wrote concat_v1 of fold 0, rerun here with its fit watched
    seen = []
    real_fit = crossval.fit

    def watched(variant, task, ts, *args, **kwargs):
        seen.append((variant, ts))
        return real_fit(variant, task, ts, *args, **kwargs)

    monkeypatch.setattr(crossval, "fit", watched)
    train, test = cohorts.folds(inputs.cohort, "agnostic", settings.folds, settings.seed)[0]
    fold = crossval.make_fold(inputs, "agnostic", 0, 0, settings.seed, train, test, settings.val_fraction)
    results_here = crossval.Results(inputs.cohort)
    crossval.run_unit(("recipe", "v1", "concat"), fold, inputs, settings, results_here, None)
    crossval.run_unit(("recipe", "v1", "no_pretrain"), fold, inputs, settings, results_here, None)
    assert [v for v, _ in seen] == ["concat", "concat"]
    assert seen[0][1] is inputs.recipes["v1"].ts["pretrained"] and seen[1][1] is inputs.recipes["v1"].ts["random"]
    written = _read(results / "finetune" / "response" / "setup-agnostic" / "predictions.tsv")
    written = written[(written["variant"] == "concat_v1") & (written["fold"] == 0) & (written["repeat"] == 0)]
    here = results_here.preds[0]
    assert set(here["variant"]) == {"concat_v1"} and results_here.preds[1]["variant"].iloc[0] == "no_pretrain_v1"
    np.testing.assert_allclose(here.set_index("subject")["score"].sort_index(),
                               written.set_index("subject")["score"].sort_index(), rtol=1e-4, atol=1e-5)


def test_a_new_finetune_seed_reruns_the_random_control_not_the_bundles_embeddings(recipe_run, recipe_project):
    """The bundle's embeddings depend on no seed: a new finetune.seed plans no recipe_embed job, and the
    random control's jobs for the changed seed (their reason: params); recipe_prepare's memory is sized from
    the files its run list names (the largest BOLD for the voxel recipe)."""
    from test_workflow import planned_jobs

    base, _, _ = recipe_project
    _, results, config = recipe_run
    seeded = {**config, "finetune": {**config["finetune"], "seed": 7}}
    proc = run_snakemake(base, seeded, "--dry-run")
    jobs = planned_jobs(proc)
    assert "recipe_embed" not in jobs and "recipe_prepare" not in jobs and jobs["recipe_embed_random"] == 3
    block = proc.stdout[proc.stdout.index("rule recipe_embed_random:"):].split("\n\n")[0]
    assert "params" in block.split("reason:")[1].splitlines()[0]
    # recipe_prepare's memory, once its run lists exist: 1000 MB and, per region recipe, 8 MB per MB of its
    # series tables; for the voxel recipe, the largest run twice as stored plus its frames at 0.8 s on 24^3
    proc = run_snakemake(base, config, "--dry-run", "--forcerun", "recipe_prepare")
    func = results / "fmriflow"
    want = {}
    for name, atlas in (("v1", "A424"), ("jepa", JEPA_ATLAS)):
        series = func.glob(f"sub-*/func/*_atlas-{atlas}_stat-mean_timeseries.tsv")
        want[name] = 1000 + int(np.ceil(8 * (sum(p.stat().st_size for p in series) / 1e6)))
    largest = 0.0
    for path in func.glob("sub-*/func/*_desc-preproc_bold.nii.gz"):
        image = nib.load(path)
        frames = round(image.shape[3] * float(image.header.get_zooms()[3]) / 0.8)
        largest = max(largest, (2 * np.prod(image.shape) * 4 + frames * 24 ** 3 * 4) / 1e6)  # float32 runs
    want["storm"] = 1000 + int(np.ceil(largest))
    for block in proc.stdout.split("rule recipe_prepare:")[1:]:
        job = block.split("\n\n")[0]
        name = job.split("/recipes/")[1].split("/")[0]
        assert f" mem_mb={want.pop(name)}," in job
    assert not want and largest > 400  # the demo's run: 216 MB as stored
