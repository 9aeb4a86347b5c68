"""Encoder bundles (fmriflow.bundle): the round trip of weights and architecture, the model card's
fields against independent computations, the atlas check, the CLI, the config's relations; and,
through the real DAG, a pretraining project and a separate fine-tuning project from its bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _coords(n=12, seed=0):
    return np.random.default_rng(seed).uniform(-60, 60, (n, 3)).astype(np.float32)


# --------------------------------------------------------------------------- round trip


def test_round_trip_gives_the_same_weights_and_module(tmp_path, torch_one_thread):
    from fmriflow.bundle.read import load_bundle_encoder
    from fmriflow.bundle.write import write_bundle
    from fmriflow.models.brainlm import create_model

    torch.manual_seed(3)
    model = create_model("tiny", _coords(), patch_size=10, max_timepoints=40, pool="cls").eval()
    paths = write_bundle(tmp_path / "bundle", model, {"Name": "test"})
    back = load_bundle_encoder(tmp_path / "bundle")

    assert back.config == model.config  # config.json rebuilds the architecture, non-default fields included
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    x = torch.randn(3, 12, 40, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, model.n_tokens(12, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.encode(x), back.encode(x))
        a, b = model(x, noise=noise), back(x, noise=noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)

    from safetensors.torch import load_file  # the weights file is plain safetensors, the coordinates in it

    assert np.array_equal(load_file(paths["weights"])["coords"].numpy(), _coords())
    random = load_bundle_encoder(tmp_path / "bundle", pretrained=False, seed=0)
    assert not torch.equal(random.patch_embed.weight, model.patch_embed.weight)
    assert torch.equal(random.coords, model.coords)


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    from fmriflow.bundle.read import load_bundle_encoder
    from fmriflow.bundle.write import write_bundle
    from fmriflow.models.brainlm import create_model

    write_bundle(tmp_path, create_model("tiny", _coords()), {})
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["hidden"] = 64
    config["config"]["decoder_hidden"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"model.safetensors: the weights do not fit the architecture of config.json"):
        load_bundle_encoder(tmp_path)


# --------------------------------------------------------------------------- the card


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory, atlas_dir):
    """What the bundle step packages, made by hand: a dataset of synthetic A424 runs (two TRs, so
    that they are resampled), a model.pt as the training loop writes it, metrics, atlas, manifest."""
    from fmriflow.atlas import a424_labels_table
    from fmriflow.datasets.regions import build_dataset, make_splits
    from fmriflow.io import write_tsv
    from fmriflow.models.brainlm import create_model
    from fmriflow.training.config import TrainConfig

    base = tmp_path_factory.mktemp("bundle_card")
    labels = a424_labels_table(atlas_dir / "A424_Coordinates.dat")
    write_tsv(base / "labels.tsv", labels)
    rng = np.random.default_rng(0)
    runs, raw = [], {}
    for subject in ("01", "02", "03", "04"):
        frame = pd.DataFrame(rng.normal(5, 2, (50, len(labels))) * rng.uniform(0.5, 3, len(labels)),
                             columns=labels["name"])
        frame.iloc[:, 7] = np.nan  # a region dropped for coverage in every run: no statistics
        raw[subject] = frame
        runs.append({"run": f"sub-{subject}/func/sub-{subject}_task-rest", "subject": subject, "tr": 2.0,
                     "timeseries": frame})
    splits = make_splits(sorted(raw), fractions=(0.5, 0.25, 0.25), seed=0)
    build_dataset(runs, splits, base / "dataset", window=40, stride=10, target_tr=None, seed=0)
    model = create_model("tiny", labels[["x", "y", "z"]].to_numpy(np.float32), patch_size=20, max_timepoints=40)
    cfg = TrainConfig(dataset=str(base / "dataset"), out=str(base / "pretrain"), coords=str(base / "labels.tsv"),
                      max_steps=7, lr=1e-3)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(model.config)}, base / "model.pt")
    pd.DataFrame({"step": [0, 5, 7, 7], "train_loss": [np.nan, 0.9, 0.7, np.nan],
                  "val_loss": [1.2, np.nan, np.nan, 0.8]}).to_csv(base / "metrics.csv", index=False)
    (base / "manifest.tsv").write_text("path\tsha256\nsub-01/func/x.nii.gz\tabc\n")
    return base, labels, raw, splits, model


def _bundle(folder, atlas_dir, out):
    from fmriflow.bundle.write import bundle_step

    preprocessing = {"preproc": {"mode": "derivatives"}, "denoise": {"strategy": "24P", "high_pass": 0.01},
                     "parcellate": {"strategy": "mean"}}
    bundle_step(str(folder / "model.pt"), str(folder / "metrics.csv"), str(folder / "dataset" / "dataset_card.json"),
                "A424", str(atlas_dir / "A424+2mm.nii.gz"), str(folder / "labels.tsv"), str(folder / "manifest.tsv"),
                str(out), preprocessing=preprocessing)
    return json.loads((out / "model_card.json").read_text())


def test_card_has_every_field_computed_independently(pretrained_folder, atlas_dir, tmp_path):
    from fmriflow.bundle.card import CARD_FIELDS, OPTIONAL_FIELDS

    folder, labels, raw, splits, model = pretrained_folder
    card = _bundle(folder, atlas_dir, tmp_path / "bundle")
    assert sorted(card) == sorted([*CARD_FIELDS, *OPTIONAL_FIELDS])
    assert card["parent"] is None  # pretrained from scratch (test_continued_pretraining: from a bundle)
    assert (tmp_path / "bundle" / "model.safetensors.json").is_file()  # the weights' provenance sidecar

    sha = lambda path: hashlib.sha256(Path(path).read_bytes()).hexdigest()  # noqa: E731
    atlas = card["atlas"]
    assert (atlas["name"], atlas["sha256"], atlas["labels_sha256"]) == (
        "A424", sha(atlas_dir / "A424+2mm.nii.gz"), sha(folder / "labels.tsv"))
    assert atlas["regions"] == labels["name"].tolist() and atlas["n_regions"] == 424
    coords = np.loadtxt(atlas_dir / "A424_Coordinates.dat")[:, 1:]
    np.testing.assert_array_equal(np.array(atlas["coordinates"]), coords)

    assert card["input"]["window"] == 40 and card["input"]["patch_size"] == 20 and card["input"]["stride"] == 10
    assert card["input"]["tr"]["target_tr"] is None and card["input"]["tr"]["stored"] == [2.0]

    # robust statistics of the training subjects' runs, by numpy
    train = splits.loc[splits["split"] == "train", "subject"].tolist()
    data = np.concatenate([raw[s].to_numpy() for s in train])
    q25, q50, q75 = np.nanpercentile(data, [25, 50, 75], axis=0)
    median = np.array([np.nan if v is None else v for v in card["scaling"]["median"]])
    iqr = np.array([np.nan if v is None else v for v in card["scaling"]["iqr"]])
    assert np.isnan(median[7]) and np.isnan(iqr[7])
    keep = np.arange(424) != 7
    np.testing.assert_allclose(median[keep], q50[keep], rtol=1e-8)  # scaling.tsv keeps 9 significant digits
    np.testing.assert_allclose(iqr[keep], (q75 - q25)[keep], rtol=1e-8)
    assert card["scaling"]["method"] == "robust" and card["scaling"]["n_timepoints"] == 50 * len(train)

    data_fp = card["pretraining_data"]
    assert data_fp["manifest_sha256"] == sha(folder / "manifest.tsv")
    assert data_fp["dataset_card_sha256"] == sha(folder / "dataset" / "dataset_card.json")
    assert (data_fp["subjects"], data_fp["runs"]) == (4, 4)
    assert data_fp["subjects_sha256"] == hashlib.sha256(b"01\n02\n03\n04").hexdigest()
    assert data_fp["hours"]["all"] == pytest.approx(4 * 50 * 2.0 / 3600)
    assert data_fp["hours"]["train"] == pytest.approx(len(train) * 50 * 2.0 / 3600)

    assert card["preprocessing"]["denoise"]["strategy"] == "24P" and card["preprocessing"]["preproc"]["mode"] == "derivatives"
    training = card["training"]
    assert training["settings"]["max_steps"] == 7 and training["settings"]["lr"] == 1e-3
    assert "dataset" not in training["settings"] and "coords" not in training["settings"]  # paths of the other machine
    assert training["final"] == {"steps": 7, "train_loss": 0.7, "train_loss_step": 7, "val_loss": 0.8, "val_loss_step": 7}
    assert card["model"]["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert card["fmriflow_version"] == __import__("fmriflow").__version__
    assert card["Provenance"]["Step"] == "bundle"


def test_card_lacking_a_field_is_refused(tmp_path):
    from fmriflow.bundle import read_card

    (tmp_path / "model_card.json").write_text(json.dumps({"Name": "x", "format_version": 1}))
    with pytest.raises(InputError, match=r"model_card.json: not an fmriflow model card: it lacks fmriflow_version, model"):
        read_card(tmp_path)
    with pytest.raises(InputError, match=r"no such file; an encoder bundle holds model.safetensors, config.json, model_card.json"):
        read_card(tmp_path / "elsewhere")


def test_atlas_mismatch_names_both_atlases(pretrained_folder, atlas_dir, tmp_path):
    from fmriflow.bundle.card import check_atlas
    from fmriflow.io import write_tsv

    folder, labels, *_ = pretrained_folder
    card = _bundle(folder, atlas_dir, tmp_path / "bundle")
    card_path = tmp_path / "bundle" / "model_card.json"
    image = atlas_dir / "A424+2mm.nii.gz"
    check_atlas(card, card_path, "A424", image, folder / "labels.tsv")  # the same atlas: accepted

    other = tmp_path / "other_dseg.nii.gz"
    other.write_bytes(image.read_bytes() + b"\0")
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(InputError) as info:
        check_atlas(card, card_path, "Schaefer400", other, folder / "labels.tsv")
    message = str(info.value)
    assert str(card_path) in message
    assert f"pretrained on atlas A424 (image sha256 {card['atlas']['sha256']})" in message
    assert f"this project's atlas is Schaefer400 (image {other}, sha256 {other_sha}" in message

    swapped = labels.copy()
    swapped.loc[[0, 1], "name"] = swapped.loc[[1, 0], "name"].to_numpy()
    write_tsv(tmp_path / "swapped.tsv", swapped)
    with pytest.raises(InputError, match=r"atlas A424 .*this project's atlas is A424 .*another region order .*region 1 differs"):
        check_atlas(card, card_path, "A424", image, tmp_path / "swapped.tsv")


def test_model_card_command_prints_the_card(pretrained_folder, atlas_dir, tmp_path):
    folder, *_ = pretrained_folder
    card = _bundle(folder, atlas_dir, tmp_path / "bundle")
    proc = subprocess.run([sys.executable, "-m", "fmriflow.cli", "model-card", str(tmp_path / "bundle")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for expected in (f"image sha256 {card['atlas']['sha256']}", "40 time points, patches of 20", "Cortex_R_001",
                     f"median {card['scaling']['median'][0]:.6g}", "423 with statistics, 1 without",
                     f"manifest sha256   {card['pretraining_data']['manifest_sha256']}", "validation 0.8 (step 7)",
                     "denoise.strategy=24P"):
        assert expected in text, expected
    as_json = subprocess.run([sys.executable, "-m", "fmriflow.cli", "model-card", "--json", str(tmp_path / "bundle")],
                             capture_output=True, text=True)
    assert json.loads(as_json.stdout) == card
    missing = subprocess.run([sys.executable, "-m", "fmriflow.cli", "model-card", str(tmp_path / "nothing")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no such file; an encoder bundle holds" in missing.stderr


def test_given_scaling_is_applied_as_given(tmp_path):
    """build_dataset with statistics given: (x - median) / iqr, by numpy; a region without a median is masked."""
    from fmriflow.datasets.regions import build_dataset, make_splits

    rng = np.random.default_rng(1)
    names = [f"r{i}" for i in range(5)]
    frames = {s: pd.DataFrame(rng.normal(3, 2, (30, 5)), columns=names) for s in ("a", "b")}
    runs = [{"run": f"sub-{s}/func/sub-{s}_task-rest", "subject": s, "tr": 1.0, "timeseries": f} for s, f in frames.items()]
    scaling = pd.DataFrame({"region": names, "median": [0.5, 1.0, np.nan, -2.0, 3.0], "iqr": [2.0, 0.25, np.nan, 1.5, 4.0]})
    card = build_dataset(runs, make_splits(["a", "b"], fractions=(0.5, 0.5, 0.0), seed=0), tmp_path / "ds", window=10,
                         stride=10, scaling=scaling, scaling_source="a test's statistics")
    assert card["scaling"]["fit_on"] == "a test's statistics"
    samples = np.load(tmp_path / "ds" / "samples.npy")
    index = pd.read_csv(tmp_path / "ds" / "index.tsv", sep="\t", dtype={"subject": str})
    for row in index.itertuples():
        x = frames[row.subject].to_numpy()[row.start_tr:row.start_tr + 10].T
        expected = ((x - scaling["median"].to_numpy()[:, None]) / scaling["iqr"].to_numpy()[:, None]).astype(np.float32)
        expected[2] = 0
        np.testing.assert_array_equal(samples[row.sample], expected)
    with pytest.raises(InputError, match=r"the given scaling has 4 regions, the time series 5"):
        build_dataset(runs, make_splits(["a", "b"], fractions=(0.5, 0.5, 0.0), seed=0), tmp_path / "ds2", window=10,
                      stride=10, scaling=scaling.iloc[:4])


@pytest.mark.parametrize("mode", ["card", "refit"])
def test_prepare_resamples_to_the_card_tr_and_scales_as_chosen(pretrained_folder, atlas_dir, tmp_path, mode):
    """A cohort at TR 1 s, prepared for an encoder pretrained at 2 s: resampled (scipy's resample_poly,
    as the card says), windows of the card's length, scaled with the card's statistics or refitted."""
    from scipy.signal import resample_poly

    from fmriflow.bundle.prepare import prepare_step
    from fmriflow.io import read_tsv, write_tsv

    folder, labels, *_ = pretrained_folder
    card = _bundle(folder, atlas_dir, tmp_path / "bundle")
    rng = np.random.default_rng(5)
    runs, paths, raw = [], [], {}
    for subject in ("11", "12", "13", "14"):
        run = f"sub-{subject}/func/sub-{subject}_task-rest"
        raw[run] = rng.normal(2, 1, (120, 424))
        path = tmp_path / "ts" / f"{subject}_timeseries.tsv"
        write_tsv(path, pd.DataFrame(raw[run], columns=labels["name"]))
        path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 1.0}))
        runs.append(run)
        paths.append(str(path))
    participants = tmp_path / "participants.tsv"
    participants.write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in ("11", "12", "13", "14")))
    config = {"dataset": {"window": 200, "stride": 20, "target_tr": None, "fractions": [0.5, 0.25, 0.25],
                          "stratify": None, "seed": 0},
              "finetune": {"scaling": mode}, **card["preprocessing"]}
    out = tmp_path / "dataset" / "dataset_card.json"
    prepare_step(str(tmp_path / "bundle" / "model_card.json"), "A424", str(atlas_dir / "A424+2mm.nii.gz"),
                 str(folder / "labels.tsv"), runs, paths, str(participants), str(out), config=config)

    index = read_tsv(out.parent / "index.tsv", dtype={"run": str, "subject": str})
    samples = np.load(out.parent / "samples.npy")
    assert set(index["tr"]) == {2.0} and samples.shape[1:] == (424, 40)  # the card's TR and window
    # TSV values are 9 significant digits, as the dataset step read them
    resampled = {run: resample_poly(read_tsv(p).to_numpy(), 1, 2, axis=0, padtype="line") for run, p in zip(runs, paths)}
    if mode == "card":
        median = np.array([np.nan if v is None else v for v in card["scaling"]["median"]])
        iqr = np.array([np.nan if v is None else v for v in card["scaling"]["iqr"]])
    else:
        train = index.loc[index["split"] == "train", "run"].unique()
        q25, median, q75 = np.percentile(np.concatenate([resampled[r] for r in train]), [25, 50, 75], axis=0)
        iqr = q75 - q25
    for row in index.itertuples():
        x = resampled[row.run][row.start_tr:row.start_tr + 40].T
        expected = (x - median[:, None]) / iqr[:, None]
        expected[~np.isfinite(median)] = 0
        np.testing.assert_allclose(samples[row.sample], expected, rtol=1e-5, atol=1e-5)
    fit_on = json.loads(out.read_text())["scaling"]["fit_on"]
    assert ("model_card.json" in fit_on) == (mode == "card")


# --------------------------------------------------------------------------- config


def _config(**sections):
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def test_encoder_relations_are_checked():
    from fmriflow.checks import check_config

    # an encoder from elsewhere: fine-tuning without pretraining is allowed
    check_config(_config(pretrain={"enabled": False}, finetune={"enabled": True, "target": "y", "encoder": "b"}), SCHEMA)
    with pytest.raises(InputError, match=r"finetune.encoder: 'b' fine-tunes an encoder pretrained elsewhere, so this "
                                         r"project pretrains none: set pretrain.enabled: false"):
        check_config(_config(finetune={"enabled": True, "target": "y", "encoder": "b"}), SCHEMA)
    with pytest.raises(InputError, match=r"finetune.encoder: 'b' is read by fine-tuning only, and finetune.enabled is false"):
        check_config(_config(pretrain={"enabled": False}, finetune={"encoder": "b"}), SCHEMA)
    with pytest.raises(InputError, match=r"finetune.scaling"):
        check_config(_config(finetune={"scaling": "zscore"}), SCHEMA)


def test_dataset_columns_count_with_an_encoder():
    """With an encoder from elsewhere the project still builds its dataset: dataset.stratify is read."""
    import yaml

    from fmriflow.checks import participant_columns_in_use, with_defaults

    schema = yaml.safe_load(SCHEMA.read_text())
    config = _config(pretrain={"enabled": False}, dataset={"stratify": "response"},
                     finetune={"enabled": True, "target": "y", "encoder": "b", "setups": ["agnostic"]})
    assert participant_columns_in_use(with_defaults(config, schema)) == {"dataset.stratify": "response",
                                                                        "finetune.target": "y"}


# --------------------------------------------------------------------------- two projects through the DAG


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory, atlas_dir):
    """A pretraining project (cohort A), its bundle copied to a folder of its own and the project's
    output folder moved away; then a fine-tuning project (cohort B) from the copied bundle."""
    from test_caching import snakemake
    from test_workflow import demo_config, make_demo

    base = tmp_path_factory.mktemp("two_projects")
    pretraining = demo_config(make_demo(base / "cohortA", atlas_dir, n_subjects=4, n_trs=60, seed=3), base / "resultsA",
                              finetune={"enabled": False})
    proc = snakemake(base, pretraining, directory=base / "stateA")
    assert proc.returncode == 0, proc.stderr[-5000:]
    made = base / "resultsA" / "fmriflow" / "models" / "atlas-A424_model-tiny"
    bundle = base / "shelf" / "encoder"
    shutil.copytree(made, bundle)
    (base / "resultsA").rename(base / "resultsA-moved")  # nothing of project A but the bundle is left to read

    finetuning = demo_config(make_demo(base / "cohortB", atlas_dir, n_subjects=4, n_trs=60, seed=4), base / "resultsB",
                             pretrain={"enabled": False})
    finetuning["finetune"].update(encoder=str(bundle), setups=["agnostic"])
    proc = snakemake(base, finetuning, directory=base / "stateB")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return base, bundle, finetuning, proc.stdout + proc.stderr


def _planned(base: Path, config: dict) -> dict[str, int]:
    """Rule -> job count of the fine-tuning project's dry run, in its own state folder."""
    from test_caching import planned_jobs

    return planned_jobs(base, config, directory=base / "stateB")


@pytest.mark.integration
def test_finetuning_project_prepares_its_windows_by_the_card(two_projects):
    from fmriflow.io import read_tsv

    base, bundle, config, log = two_projects
    results = Path(config["output_dir"])
    assert not (results / "pretrain").exists() and "rule pretrain:" not in log  # no pretrain job
    assert (results / "finetune" / "response" / "variants.tsv").is_file()

    card = json.loads((bundle / "model_card.json").read_text())
    median = np.array([np.nan if v is None else v for v in card["scaling"]["median"]])
    iqr = np.array([np.nan if v is None else v for v in card["scaling"]["iqr"]])
    window = card["input"]["window"]
    dataset = results / "dataset" / "atlas-A424"
    samples = np.load(dataset / "samples.npy")
    index = read_tsv(dataset / "index.tsv", dtype={"run": str, "subject": str})
    assert len(index) > 0 and samples.shape[2] == window
    assert set(index["tr"]) == set(card["input"]["tr"]["stored"])  # cohort B is at the card's TR: not resampled
    for run, rows in index.groupby("run"):
        name = f"{run}_space-MNI152NLin6Asym_res-2_atlas-A424_stat-mean_timeseries.tsv"
        x = read_tsv(results / "fmriflow" / name).to_numpy(dtype=np.float64).T  # (regions, time)
        scaled = ((x - median[:, None]) / iqr[:, None]).astype(np.float32)
        scaled[~np.isfinite(median) | np.isnan(x).all(axis=1)] = 0
        for row in rows.itertuples():
            np.testing.assert_array_equal(samples[row.sample], scaled[:, row.start_tr:row.start_tr + window])

    # the embeddings came from the bundle's weights, as recorded in the features' provenance
    sidecar = json.loads(next((results / "finetune" / "response" / "features").glob("*ts*pretrained*.json")).read_text())
    inputs = {Path(i["path"]).name: i["sha256"] for i in sidecar["Provenance"]["Inputs"]}
    assert inputs["model.safetensors"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.integration
def test_report_shows_the_bundles_card_and_the_probe_rows(two_projects):
    """No pretraining here: the Pretraining section shows the bundle's card (each figure read here from
    model_card.json, each sha256 computed here), and the variant table has the frozen probes."""
    from fmriflow.io import read_tsv
    from test_report import _Page, _rows

    _, bundle, config, _ = two_projects
    results = Path(config["output_dir"])
    text = (results / "report" / "fmriflow_report.html").read_text()
    page = _Page()
    page.feed(text)
    pretraining = text.split('<section id="pretraining">')[1].split("</section>")[0]
    assert "<b>Not run:</b> pretraining" not in pretraining and 'id="encoder-card"' in pretraining
    fields = {r["Field"]: r["Value"] for r in _rows(page, "encoder-card")}
    card = json.loads((bundle / "model_card.json").read_text())
    for name in ("model.safetensors", "config.json", "model_card.json"):
        assert fields[f"sha256 of {name}"] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    assert fields["fmriflow version"].startswith(f"{card['fmriflow_version']} ")
    atlas, data, final = card["atlas"], card["pretraining_data"], card["training"]["final"]
    assert fields["Atlas"] == f"{atlas['name']}, {atlas['n_regions']} regions, image sha256 {atlas['sha256']}"
    assert fields["Window and patch"] == f"{card['input']['window']} time points, patches of {card['input']['patch_size']}"
    assert fields["TR"].startswith(f"pretraining data stored at {', '.join(f'{t:g}' for t in card['input']['tr']['stored'])} s")
    assert fields["Scaling"].startswith(f"{card['scaling']['method']}: ")
    assert fields["Statistics fitted on"].endswith("(finetune.scaling: card)")
    assert fields["Pretraining subjects"].startswith(f"{data['subjects']} (")
    assert fields["Pretraining runs"].startswith(f"{data['runs']} (")
    assert fields["Pretraining hours"] == ", ".join(f"{k} {v:.2f}" for k, v in data["hours"].items())
    assert fields["Pretraining manifest sha256"] == data["manifest_sha256"]
    assert fields["Final losses"] == (f"train {final['train_loss']:.6g} (step {final['train_loss_step']}), validation "
                                      f"{final['val_loss']:.6g} (step {final['val_loss_step']}), {final['steps']} steps")

    variants = read_tsv(results / "finetune" / "response" / "variants.tsv").set_index("variant")
    shown = {r["Variant"]: r for r in _rows(page, "finetune-variants")}
    for name, kind in (("probe", "probe"), ("probe_random", "control")):
        row = variants.loc[name]
        assert shown[name]["Kind"] == kind
        assert shown[name]["AUROC pooled [95% CI]"] == (f"{row['auroc_pooled']:.3f} [{row['auroc_ci_low']:.3f}, "
                                                        f"{row['auroc_ci_high']:.3f}]")
    assert {"probe", "probe_random"} <= {r["Variant"] for r in _rows(page, "roc-confusion")}


@pytest.mark.integration
def test_changed_bundle_reruns_finetuning_and_nothing_upstream(two_projects):
    from safetensors.torch import load_file, save_file
    from test_caching import UPSTREAM

    base, bundle, config, _ = two_projects
    assert _planned(base, config) == {}
    state = load_file(bundle / "model.safetensors")
    state["patch_embed.weight"] = state["patch_embed.weight"] * 1.5
    save_file(state, str(bundle / "model.safetensors"), metadata={"format": "pt"})
    finetuning = {"finetune_features": 1, "finetune": 1, "finetune_table": 1, "report": 1, "all": 1}
    assert _planned(base, config) == finetuning

    card = json.loads((bundle / "model_card.json").read_text())
    card["scaling"]["median"][0] += 1.0
    (bundle / "model_card.json").write_text(json.dumps(card))
    planned = _planned(base, config)
    assert planned == {"dataset": 1, **finetuning}  # the card prepares the data: they are prepared again
    assert not set(planned) & UPSTREAM
