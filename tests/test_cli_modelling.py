"""The modelling commands (`fmriflow dataset | pretrain | finetune | finetune-summary`), run as a user
would (subprocesses), end to end on a few synthetic subjects' XCP-D-style region time series; their
artefacts against the library's own calls made here from the raw files, their file layout against
the workflow's rules, and config errors naming the key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from test_timeseries_input import ATLAS, atlas_table, coordinates_file, write_xcpd

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = [f"{k:02d}" for k in range(1, 9)]


def fmriflow(*args):
    return subprocess.run([sys.executable, "-m", "fmriflow.cli", *map(str, args)], capture_output=True, text=True)


def _config(tmp_path: Path, data: Path, coordinates: Path) -> Path:
    config = {
        "output_dir": str(tmp_path / "results"),
        "input": {"timeseries": {"format": "xcpd", "dir": str(data), "atlas": ATLAS, "coordinates": str(coordinates)}},
        "dataset": {"window": 20, "stride": 10, "fractions": [0.5, 0.25, 0.25], "stratify": "response"},
        "pretrain": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "num_workers": 0},
        "finetune": {"target": "response", "variants": ["concat"], "folds": 2, "max_epochs": 1, "min_epochs": 0,
                     "patience": 1, "permutations": 1, "resnet_width": 2, "embed_dim": 8, "bootstrap": 10,
                     "ig_steps": 2, "drug_column": None, "site_column": None, "setups": ["agnostic"]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The four commands, one after the other, on 8 subjects of a 100-region atlas (60 TRs each)."""
    base = tmp_path_factory.mktemp("cli_modelling")
    table = atlas_table()
    files = write_xcpd(base / "data", SUBJECTS, table)
    config = _config(base, base / "data", coordinates_file(base / "atlas", table))
    outputs = {}
    for command in ("dataset", "pretrain", "finetune", "finetune-summary"):
        proc = fmriflow(command, "--config", config)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-4000:]}"
        outputs[command] = proc.stdout
    return base, config, files, outputs


def test_dataset_equals_the_library_build(project, tmp_path):
    """From the raw files (read here with pandas) up to the 8 significant digits of the ingested time
    series; from the ingested files exactly, byte for byte."""
    from fmriflow.datasets.participants import subject_labels
    from fmriflow.datasets.regions import build_dataset, make_splits

    base, _, files, _ = project
    made = base / "results" / "dataset" / f"atlas-{ATLAS}"
    labels = subject_labels(base / "data" / "participants.tsv", "response")
    splits = make_splits(SUBJECTS, fractions=(0.5, 0.25, 0.25), seed=0, stratify=labels.loc[SUBJECTS])
    ingested = base / "results" / "fmriflow"
    for source, tolerance in (("raw", 1e-5), ("ingested", 0)):
        specs = []
        for s, path in files.items():
            if source == "ingested":
                path = ingested / f"sub-{s}/func/sub-{s}_task-rest_space-MNI152NLin6Asym_res-2_atlas-{ATLAS}_stat-mean_timeseries.tsv"
            specs.append({"run": f"sub-{s}/func/sub-{s}_task-rest", "subject": s, "tr": 2.0,
                          "timeseries": pd.read_csv(path, sep="\t", na_values="n/a")})
        build_dataset(specs, splits, tmp_path / source, window=20, stride=10, target_tr=None, seed=0)
        for name in ("samples.npy", "region_mask.npy"):
            np.testing.assert_allclose(np.load(made / name), np.load(tmp_path / source / name), rtol=0, atol=tolerance)
        for name in ("index.tsv", "splits.tsv"):
            assert (made / name).read_bytes() == (tmp_path / source / name).read_bytes(), name
        ours, theirs = (pd.read_csv(d / "scaling.tsv", sep="\t", index_col=0) for d in (made, tmp_path / source))
        np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=tolerance, atol=0)
    assert (made / "scaling.tsv").read_bytes() == (tmp_path / "ingested" / "scaling.tsv").read_bytes()
    assert "dataset written" in project[3]["dataset"]


def test_pretrained_weights_equal_the_library_training(project, tmp_path):
    from fmriflow.training.config import TrainConfig
    from fmriflow.training.loop import train

    base = project[0]
    results = base / "results"
    train(TrainConfig(dataset=str(results / "dataset" / f"atlas-{ATLAS}"), out=str(tmp_path / "run"),
                      coords=str(results / "fmriflow" / "atlases" / f"atlas-{ATLAS}" / f"atlas-{ATLAS}_dseg.tsv"),
                      model="tiny", max_steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, num_workers=0))
    ours = torch.load(results / "pretrain" / "tiny" / "model.pt", weights_only=False)["model"]
    theirs = torch.load(tmp_path / "run" / "model.pt", weights_only=False)["model"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    card = json.loads((results / "fmriflow" / "models" / f"atlas-{ATLAS}_model-tiny" / "model_card.json").read_text())
    assert card["atlas"]["name"] == ATLAS and card["atlas"]["n_regions"] == 100 and card["parent"] is None


def test_finetune_table_and_summary(project):
    base, _, _, outputs = project
    folder = base / "results" / "finetune" / "response"
    variants = pd.read_csv(folder / "variants.tsv", sep="\t")
    metrics = pd.read_csv(folder / "setup-agnostic" / "metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(variants, metrics)  # one set-up: the table is its metrics
    assert "concat" in set(variants["variant"])
    assert "concat" in outputs["finetune-summary"]


def test_continued_pretraining_from_the_first_projects_bundle(project, tmp_path):
    """A second project continues pretraining from the first's bundle (pretrain.init through --set):
    its windows are scaled by the card, and its own bundle names the first as its parent."""
    import hashlib

    base, config, _, _ = project
    bundle = base / "results" / "fmriflow" / "models" / f"atlas-{ATLAS}_model-tiny"
    for command in ("dataset", "pretrain"):
        proc = fmriflow(command, "--config", config, "--output-dir", tmp_path / "second", "--set", f"pretrain.init={bundle}")
        assert proc.returncode == 0, f"{command}: {proc.stderr[-4000:]}"
    card = json.loads((tmp_path / "second" / "fmriflow" / "models" / f"atlas-{ATLAS}_model-tiny" / "model_card.json").read_text())
    assert card["parent"]["sha256"]["model.safetensors"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    scaling = pd.read_csv(tmp_path / "second" / "dataset" / f"atlas-{ATLAS}" / "scaling.tsv", sep="\t")
    theirs = json.loads((bundle / "model_card.json").read_text())["scaling"]
    np.testing.assert_allclose(scaling["median"], [np.nan if v is None else v for v in theirs["median"]], rtol=1e-12)


def test_every_artefact_has_its_provenance_sidecar(project):
    from fmriflow.provenance import sidecar_path

    results = project[0] / "results"
    # the run's own records (logs, checkpoints, TensorBoard events) are not artefacts, as in the workflow
    records = {"train_log.csv", "checkpoint.pt"}
    missing = []
    for path in sorted(results.rglob("*")):
        if not path.is_file() or path.suffix == ".json" or path.name in records or "tensorboard" in path.parts:
            continue
        if path.parent.name.startswith("atlas-") and path.parent.parent.name == "dataset" and path.name != "dataset_card.json":
            continue  # the dataset's files: its card records them with their sha256
        covered = sidecar_path(path).is_file() or any(
            path.name in json.dumps(json.loads(s.read_text()).get("Provenance", {}).get("Outputs", []))
            for s in path.parent.glob("*.json"))
        if not covered:
            missing.append(str(path.relative_to(results)))
    assert missing == []


@pytest.mark.integration  # plans the real DAG (a Snakemake dry run)
def test_layout_is_the_rules(project, tmp_path):
    """A dry run of the workflow with the same config file plans the same files, and nothing else
    (the CLI's outputs are where the rules put them, so the workflow can take over a CLI project)."""
    base, config, _, _ = project
    results = base / "results"
    made = {p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()}
    cfg = yaml.safe_load(config.read_text())
    cfg["output_dir"] = str(tmp_path / "planned")
    cfg["input"]["mode"] = "timeseries"
    cfg["finetune"]["enabled"] = True
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--dry-run",
                           "--cores", "1", "--configfile", str(tmp_path / "config.yaml"), "--directory", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefix = str(tmp_path / "planned") + "/"
    planned = {name.strip().removeprefix(prefix) for line in (proc.stdout + proc.stderr).splitlines()
               if line.strip().startswith("output:") for name in line.split(":", 1)[1].split(",")}
    for name in ("dataset/atlas-toy100/dataset_card.json", "pretrain/tiny/model.pt", "pretrain/tiny/metrics.csv",
                 "fmriflow/models/atlas-toy100_model-tiny/model.safetensors", "finetune/response/variants.tsv",
                 "finetune/response/setup-agnostic/metrics.tsv", "fmriflow/group/desc-runs_qc.tsv"):
        assert name in made and name in planned, name


def test_a_bad_config_key_is_named(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"windw": 40}, "input": {"timeseries": {"dir": str(tmp_path)}}}))
    proc = fmriflow("dataset", "--config", config)
    assert proc.returncode == 1
    assert "dataset: Additional properties are not allowed ('windw' was unexpected)" in proc.stderr
    assert str(config) in proc.stderr
    proc = fmriflow("pretrain", "--config", config, "--set", "pretrain.max_step=3")
    assert proc.returncode == 1 and "'max_step' was unexpected" in proc.stderr and "--set" in proc.stderr
    proc = fmriflow("dataset", "--set", "dataset.window=10")
    assert proc.returncode == 1 and "dataset.window: 10 is less than the minimum of 20" in proc.stderr
    config.write_text(yaml.safe_dump({"input": {"mode": "bids"}}))
    proc = fmriflow("dataset", "--config", config)
    assert proc.returncode == 1 and "input.mode is 'bids'" in proc.stderr


def test_finetune_rule_drops_the_same_keys():
    """The finetune rule and `fmriflow finetune` give the set-up the same settings."""
    from fmriflow.modelling import FINETUNE_NOT_SETTINGS

    rule = (REPO / "workflow" / "rules" / "finetune.smk").read_text()
    dropped = re.search(r'\*\*shaping\("finetune",[^=]*?drop=\(([^)]*)\)', rule, re.S)[1]
    assert sorted(re.findall(r'"finetune\.(\w+)"', dropped)) == sorted(FINETUNE_NOT_SETTINGS)
