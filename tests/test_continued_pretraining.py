"""Continued pretraining from an encoder bundle (``pretrain.init``): the run starts from the bundle's
weights (read back here with safetensors itself), resumes exactly, records its parent in the new
bundle's card, and refuses a bundle of another atlas or architecture, naming both sides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmriflow.errors import InputError
from fmriflow.training.config import TrainConfig
from fmriflow.training.loop import train

N_REGIONS, N_TIME = 16, 200


@pytest.fixture(scope="module")
def project(tmp_path_factory, torch_one_thread):
    """A toy dataset of 6 subjects (atlas 'Toy', 16 regions), and a bundle pretrained on it for 6 steps."""
    from fmriflow.bundle.write import bundle_step
    from fmriflow.datasets.regions import build_dataset, make_splits

    root = tmp_path_factory.mktemp("continued")
    rng = np.random.default_rng(0)
    mixing = 0.2 + 0.8 * rng.random((2, N_REGIONS))
    names = [f"r{i}" for i in range(N_REGIONS)]
    runs = []
    for s in range(6):
        src = np.cumsum(rng.standard_normal((N_TIME, 2)), axis=0) * 0.1
        values = src @ mixing + 0.1 * rng.standard_normal((N_TIME, N_REGIONS))
        runs.append({"run": f"sub-{s:02d}/func/sub-{s:02d}_task-rest", "subject": f"{s:02d}", "tr": 2.0,
                     "timeseries": pd.DataFrame(values, columns=names)})
    splits = make_splits([r["subject"] for r in runs], fractions=(4 / 6, 2 / 6, 0.0), seed=0)
    build_dataset(runs, splits, root / "dataset", window=40, stride=20)
    coords = root / "coords.tsv"
    pd.DataFrame({"index": range(1, N_REGIONS + 1), "name": names, "x": rng.uniform(-60, 60, N_REGIONS),
                  "y": rng.uniform(-90, 60, N_REGIONS), "z": rng.uniform(-40, 70, N_REGIONS)}).to_csv(coords, sep="\t", index=False)
    manifest = root / "manifest.tsv"
    manifest.write_text("path\tsha256\nsub-00_timeseries.tsv\tabc\n")
    parent_run = root / "parent_run"
    train(_config(root, coords, parent_run, max_steps=6, seed=7))
    bundle = root / "parent_bundle"
    bundle_step(str(parent_run / "model.pt"), str(parent_run / "metrics.csv"), str(root / "dataset" / "dataset_card.json"),
                "Toy", None, str(coords), str(manifest), str(bundle), preprocessing={"preproc": {"mode": "derivatives"}})
    return root, coords, manifest, bundle


def _config(root, coords, out, **overrides) -> TrainConfig:
    base = dict(dataset=str(root / "dataset"), coords=str(coords), out=str(out), model="tiny", batch_size=4,
                max_steps=12, warmup_steps=2, checkpoint_every=4, eval_every=6, log_every=1, num_workers=0, lr=3e-3)
    return TrainConfig(**{**base, **overrides})


def _continued(project, out, **overrides) -> TrainConfig:
    root, coords, _, bundle = project
    return _config(root, coords, out, **{"init_from": str(bundle), "atlas": "Toy", **overrides})


def _weights(out) -> dict:
    return torch.load(Path(out) / "model.pt", weights_only=False)["model"]


def test_initial_weights_are_the_bundles(project):
    from safetensors import safe_open

    from fmriflow.training.tasks import build_task

    bundle = project[3]
    model = build_task(_continued(project, project[0] / "unused")).model
    with safe_open(str(bundle / "model.safetensors"), framework="np") as fh:  # read without fmriflow
        stored = {name: fh.get_tensor(name) for name in fh.keys()}
    ours = model.state_dict()
    assert sorted(stored) == sorted(ours)
    for name, value in stored.items():
        assert np.array_equal(ours[name].numpy(), value), name
    scratch = build_task(_config(project[0], project[1], project[0] / "unused")).model.state_dict()
    assert not np.array_equal(scratch["patch_embed.weight"].numpy(), stored["patch_embed.weight"])


def test_continued_run_resumes_exactly(project, tmp_path):
    train(_continued(project, tmp_path / "straight"))
    result = train(_continued(project, tmp_path / "split"), should_stop=lambda step: step == 5)
    assert result == {"step": 5, "interrupted": True}
    train(_continued(project, tmp_path / "split"))
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for key, value in straight.items():
        assert torch.equal(split[key], value), key
    logs = [pd.read_csv(tmp_path / d / "train_log.csv").dropna(subset=["train_loss"]) for d in ("straight", "split")]
    np.testing.assert_allclose(logs[1]["train_loss"], logs[0]["train_loss"], atol=1e-6, rtol=0)
    # the sidecar of model.pt lists the bundle's files among its inputs, with their sha256
    sidecar = json.loads((tmp_path / "straight" / "model.json").read_text())
    listed = json.dumps(sidecar)
    for name in ("model.safetensors", "config.json", "model_card.json"):
        assert hashlib.sha256((project[3] / name).read_bytes()).hexdigest() in listed, name


def test_a_changed_bundle_starts_over(project, tmp_path):
    """A checkpoint continued from another bundle is not this run's (its inputs' sha256 differ)."""
    import shutil

    other = tmp_path / "other_bundle"
    shutil.copytree(project[3], other)
    out = tmp_path / "run"
    cfg = _continued(project, out, max_steps=4)
    cfg.init_from = str(other)
    train(cfg)
    train(cfg)  # the same bundle: the finished checkpoint is this run's
    assert not (out / "checkpoint.pt.stale").exists()
    card = json.loads((other / "model_card.json").read_text())
    (other / "model_card.json").write_text(json.dumps({**card, "Name": card["Name"] + " (edited)"}))
    train(cfg)
    assert (out / "checkpoint.pt.stale").is_file()


def test_new_card_records_its_parent(project, tmp_path):
    from fmriflow.bundle.show import format_card
    from fmriflow.bundle.write import bundle_step

    root, coords, manifest, parent = project
    train(_continued(project, tmp_path / "run", max_steps=4))
    bundle_step(str(tmp_path / "run" / "model.pt"), str(tmp_path / "run" / "metrics.csv"),
                str(root / "dataset" / "dataset_card.json"), "Toy", None, str(coords), str(manifest),
                str(tmp_path / "child"), preprocessing={"preproc": {"mode": "derivatives"}})
    card = json.loads((tmp_path / "child" / "model_card.json").read_text())
    theirs = json.loads((parent / "model_card.json").read_text())
    recorded = card["parent"]
    assert recorded["sha256"] == {name: hashlib.sha256((parent / name).read_bytes()).hexdigest()
                                  for name in ("model.safetensors", "config.json", "model_card.json")}
    assert recorded["model"] == theirs["model"]
    assert recorded["training"]["final"] == theirs["training"]["final"]
    assert recorded["pretraining_data"]["subjects"] == 6 and recorded["atlas"]["name"] == "Toy"
    assert recorded["parent"] is None and theirs["parent"] is None  # the parent was pretrained from scratch
    assert "init_from" not in card["training"]["settings"]  # a path on this machine, not the parent's identity
    text = format_card(card)
    assert recorded["sha256"]["model.safetensors"][:16] in text


def test_other_atlas_names_both(project, tmp_path):
    with pytest.raises(InputError, match=r"pretrained on atlas Toy .*this project's atlas is Schaefer200"):
        train(_continued(project, tmp_path / "run", atlas="Schaefer200"))
    # the same name, another region order
    root, coords, _, _ = project
    table = pd.read_csv(coords, sep="\t")
    table["name"] = list(reversed(table["name"]))
    shuffled = tmp_path / "shuffled.tsv"
    table.to_csv(shuffled, sep="\t", index=False)
    cfg = _continued(project, tmp_path / "run")
    cfg.coords = str(shuffled)
    with pytest.raises(InputError, match=r"another region order \(16 regions here, 16 in the card; region 1 differs\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_other_architecture_names_both(project, tmp_path):
    with pytest.raises(InputError, match=r"config.json: pretrain.init: the bundle's architecture is not "
                                         r"pretrain.model's: hidden 32 in the bundle, 256 here"):
        train(_continued(project, tmp_path / "run", model="brainlm-5m"))


def test_init_needs_pretraining_enabled():
    import yaml

    from fmriflow.checks import check_config

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    config = {"bids_dir": "x", "pretrain": {"enabled": False, "init": "models/b"}}
    with pytest.raises(InputError, match=r"pretrain.init: 'models/b' continues pretraining from a bundle, and "
                                         r"pretrain.enabled is false"):
        check_config(config, schema)
    check_config({"bids_dir": "x", "pretrain": {"init": "models/b"}}, schema)
    assert yaml.safe_load(schema.read_text())["properties"]["pretrain"]["properties"]["init"]["default"] is None


# --------------------------------------------------------------------------- through the DAG


def _a424_bundle(base: Path, atlas_dir: Path) -> Path:
    """A bundle of the tiny model on A424 (20-TR windows at TR 2 s, as the test demo's), made by hand."""
    import dataclasses

    from fmriflow.atlas import a424_labels_table
    from fmriflow.bundle.write import bundle_step
    from fmriflow.datasets.regions import build_dataset, make_splits
    from fmriflow.io import write_tsv
    from fmriflow.models.brainlm import create_model

    labels = a424_labels_table(atlas_dir / "A424_Coordinates.dat")
    write_tsv(base / "labels.tsv", labels)
    rng = np.random.default_rng(1)
    runs = [{"run": f"sub-{s}/func/sub-{s}_task-rest", "subject": s, "tr": 2.0,
             "timeseries": pd.DataFrame(rng.normal(0, 1, (40, len(labels))), columns=labels["name"])}
            for s in ("01", "02", "03")]
    build_dataset(runs, make_splits(["01", "02", "03"], fractions=(2 / 3, 1 / 3, 0.0), seed=0), base / "dataset",
                  window=20, stride=10)
    torch.manual_seed(5)
    model = create_model("tiny", labels[["x", "y", "z"]].to_numpy(np.float32))
    cfg = TrainConfig(dataset=str(base / "dataset"), out=str(base), coords=str(base / "labels.tsv"), max_steps=3)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(model.config)}, base / "model.pt")
    pd.DataFrame({"step": [0, 3], "train_loss": [np.nan, 0.9], "val_loss": [1.1, np.nan]}).to_csv(base / "metrics.csv", index=False)
    (base / "manifest.tsv").write_text("path\tsha256\nelsewhere.nii.gz\tabc\n")
    bundle_step(str(base / "model.pt"), str(base / "metrics.csv"), str(base / "dataset" / "dataset_card.json"), "A424",
                str(atlas_dir / "A424+2mm.nii.gz"), str(base / "labels.tsv"), str(base / "manifest.tsv"),
                str(base / "bundle"), preprocessing={"preproc": {"mode": "derivatives"}})
    return base / "bundle"


def _a424_timeseries(folder: Path, atlas_dir: Path) -> Path:
    """4 subjects' XCP-D-style A424 region time series (60 TRs at 2 s), their participants table and the
    atlas's coordinates table: a project of region time series (input.mode timeseries)."""
    from fmriflow.atlas import a424_labels_table

    labels = a424_labels_table(atlas_dir / "A424_Coordinates.dat")
    rng = np.random.default_rng(2)
    for s in ("01", "02", "03", "04"):
        func = folder / f"sub-{s}" / "func"
        func.mkdir(parents=True)
        name = f"sub-{s}_task-rest_space-MNI152NLin6Asym_atlas-A424_stat-mean_timeseries"
        pd.DataFrame(rng.normal(0, 1, (60, len(labels))), columns=labels["name"]).to_csv(func / f"{name}.tsv", sep="\t",
                                                                                         index=False)
        (func / f"{name}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in ("01", "02", "03", "04")]}).to_csv(
        folder / "participants.tsv", sep="\t", index=False)
    labels[["name", "x", "y", "z"]].to_csv(folder.parent / "A424_coordinates.tsv", sep="\t", index=False)
    return folder.parent / "A424_coordinates.tsv"


@pytest.mark.integration
def test_pretrain_rule_continues_from_the_bundle(tmp_path, atlas_dir):
    """pretrain.init through the real DAG (region time series in, up to the bundle): the dataset is
    prepared by the card, the pretrain job starts from the bundle's weights, and the project's own
    bundle names it as its parent."""
    from test_caching import snakemake
    from test_workflow import SHORT_RUNS

    bundle = _a424_bundle(tmp_path, atlas_dir)
    coordinates = _a424_timeseries(tmp_path / "data", atlas_dir)
    results = tmp_path / "results"
    config = {"output_dir": str(results), "input": {"mode": "timeseries", "timeseries": {
        "format": "xcpd", "dir": str(tmp_path / "data"), "atlas": "A424", "coordinates": str(coordinates)}},
        "dataset": SHORT_RUNS["dataset"], "pretrain": {**SHORT_RUNS["pretrain"], "init": str(bundle)}}
    made = results / "fmriflow" / "models" / "atlas-A424_model-tiny"
    proc = snakemake(tmp_path, config, str(made / "model_card.json"), directory=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr[-5000:]
    card = json.loads((made / "model_card.json").read_text())
    weights = hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    assert card["parent"]["sha256"]["model.safetensors"] == weights
    dataset = json.loads((results / "dataset" / "atlas-A424" / "dataset_card.json").read_text())
    assert "model card" in json.dumps(dataset["scaling"])  # scaled by the card's statistics (finetune.scaling: card)
    sidecar = json.loads((results / "pretrain" / "tiny" / "model.json").read_text())
    assert weights in json.dumps(sidecar["Provenance"]["Inputs"])
