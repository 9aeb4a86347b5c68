"""The real Snakemake DAG on a small demo dataset, checked against independent computations.

Runs ``snakemake --profile profiles/local`` as a user would, then recomputes the region
time series with nilearn's NiftiLabelsMasker and the FC with numpy's corrcoef.
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
import yaml
from bids.layout import parse_file_entities
from nilearn.maskers import NiftiLabelsMasker

from fmriflow.io import read_tsv, sha256sum

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def run_snakemake(workdir: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2",
           "--configfile", str(cfg), "--directory", str(REPO), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


def make_demo(out: Path, atlas_dir: Path, **kwargs) -> Path:
    from fmriflow.demo import generate_demo

    generate_demo(out, atlas_dir / "A424+2mm.nii.gz", atlas_dir / "A424_Coordinates.dat", jobs=2, **kwargs)
    return out


def demo_config(demo: Path, results: Path, **extra) -> dict:
    return {
        "bids_dir": str(demo / "bids"),
        "output_dir": str(results),
        "preproc": {"mode": "derivatives", "derivatives_dir": str(demo / "derivatives" / "fmriprep")},
        "report": {"group_column": "response", "ground_truth": str(demo / "ground_truth" / "edges.tsv")},
        # short runs: 20-TR windows, and a few pretraining steps of the tiny model
        "dataset": {"window": 20, "stride": 10, "fractions": [0.5, 0.25, 0.25]},
        "pretrain": {"max_steps": 6, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 3},
        **extra,
    }


def job_resources(dry_run_stdout: str, rule: str) -> str:
    """The ``resources:`` line of a rule's job in ``--dry-run`` output."""
    block = dry_run_stdout[dry_run_stdout.index(f"rule {rule}:"):]
    return next(line for line in block.splitlines() if "resources:" in line)


def coarse_atlas(folder: Path, a424: nib.Nifti1Image) -> dict:
    """A user's atlas on a 4 mm grid: A424's four region groups (cortex R/L, subcortex, cerebellum)."""
    labels = np.rint(np.asarray(a424.dataobj)).astype(int)[::2, ::2, ::2]
    groups = np.digitize(labels, [1, 181, 361, 397])  # 0 background, 1..4
    affine = a424.affine.copy()
    affine[:3, :3] *= 2
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(groups.astype(np.int16), affine), folder / "groups.nii.gz")
    pd.DataFrame({"index": [1, 2, 3, 4], "name": ["CortexR", "CortexL", "Subcortex", "Cerebellum"]}).to_csv(
        folder / "groups.tsv", sep="\t", index=False)
    return {"image": str(folder / "groups.nii.gz"), "labels": str(folder / "groups.tsv")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, atlas_dir, a424_img):
    """One DAG run with every option on: a second atlas, partial and tangent FC, dynamic FC."""
    base = tmp_path_factory.mktemp("wf")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=60, seed=3)
    results = base / "results"
    config = demo_config(
        demo, results,
        atlas={"extra": {"Groups": coarse_atlas(base / "atlas", a424_img)}},
        connectivity={"kinds": ["pearson", "partial", "tangent"], "sliding_window": {"window": 30, "step": 15}},
    )
    proc = run_snakemake(base, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return demo, results, base, config


def _runs(results: Path, atlas: str = "A424") -> list[Path]:
    return sorted((results / "fmriflow").glob(f"sub-*/func/*_atlas-{atlas}_stat-mean_timeseries.tsv"))


def test_every_run_has_timeseries_and_fc(pipeline):
    demo, results, _, _ = pipeline
    raw = sorted((demo / "bids").glob("sub-*/func/*_bold.nii.gz"))
    assert len(raw) == 4 and len(_runs(results)) == 4
    assert (results / "report" / "fmriflow_report.html").stat().st_size > 10_000
    validation = json.loads((results / "bids" / "validation.json").read_text())
    assert validation["n_errors"] == 0


def test_timeseries_equal_nilearn_masker(pipeline, a424_labels):
    _, results, _, _ = pipeline
    atlas = results / "fmriflow/atlases/atlas-A424/atlas-A424_space-MNI152NLin6Asym_res-2_dseg.nii.gz"
    for ts_path in _runs(results):
        stem = ts_path.name.split("_space-")[0]
        denoised = ts_path.with_name(f"{stem}_space-MNI152NLin6Asym_res-2_desc-denoised_bold.nii.gz")
        mask = ts_path.with_name(f"{stem}_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz")
        ours = read_tsv(ts_path)
        assert list(ours.columns) == a424_labels["name"].tolist()
        masker = NiftiLabelsMasker(labels_img=str(atlas), mask_img=str(mask), strategy="mean")
        ref = masker.fit_transform(str(denoised))
        ids = masker.region_ids_
        coverage = read_tsv(ts_path.with_name(f"{stem}_space-MNI152NLin6Asym_res-2_atlas-A424_stat-coverage_bold.tsv"))
        used = dict(zip(coverage["index"], coverage["used"].astype(str) == "True"))
        compared = 0
        for col in range(ref.shape[1]):
            label = int(ids[col])
            if used[label]:
                np.testing.assert_allclose(ours.iloc[:, label - 1], ref[:, col], atol=1e-5, rtol=0)
                compared += 1
            else:
                assert ours.iloc[:, label - 1].isna().all()
        assert compared > 400


def test_fc_equals_corrcoef(pipeline):
    _, results, _, _ = pipeline
    for ts_path in _runs(results) + _runs(results, "Groups"):
        ts = read_tsv(ts_path).to_numpy()
        fc_path = ts_path.with_name(ts_path.name.replace("stat-mean_timeseries", "stat-pearsoncorrelation_relmat"))
        fc = read_tsv(fc_path, index_col=0)
        assert fc.shape == (ts.shape[1],) * 2
        np.testing.assert_allclose(np.load(fc_path.with_suffix(".npy")), fc.to_numpy(), atol=1e-8, rtol=0)  # TSV: 9 digits
        valid = np.isfinite(ts).all(axis=0)
        np.testing.assert_allclose(fc.to_numpy()[np.ix_(valid, valid)], np.corrcoef(ts[:, valid], rowvar=False), atol=1e-7)
        assert np.isnan(fc.to_numpy()[~valid]).all()


def test_names_parse_as_bids_derivatives(pipeline):
    _, results, _, _ = pipeline
    root = results / "fmriflow"
    assert json.loads((root / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    files = [p for p in root.glob("sub-*/func/*") if p.suffix != ".json"]
    # per run: qc, BOLD, mask, denoised BOLD; per atlas: time series, coverage, pearson and
    # partial (TSV + NPY), dynamic FC
    assert len(files) == 4 * (4 + 2 * 7)
    for path in files:
        ent = parse_file_entities(str(path))
        assert ent["subject"] == path.parts[-3].removeprefix("sub-") and ent["task"] == "rest", path
        if "space-" in path.name:
            assert ent["space"] == "MNI152NLin6Asym", path
        assert path.name.split("_")[-1].split(".")[0] == ent["suffix"], path


def test_sidecars_record_true_checksums(pipeline):
    _, results, _, _ = pipeline
    artefacts = [p for p in (results / "fmriflow").rglob("*") if p.is_file() and p.suffix in (".tsv", ".gz", ".npy")]
    assert artefacts
    for path in artefacts:
        sidecar = path.with_name(path.name.split(".")[0] + ".json")
        assert sidecar.is_file(), f"no sidecar for {path}"
        record = json.loads(sidecar.read_text())["Provenance"]
        for item in record["Inputs"]:
            assert sha256sum(item["path"]) == item["sha256"], (path, item["path"])


def test_manifest_lists_raw_files(pipeline):
    demo, results, _, _ = pipeline
    manifest = read_tsv(results / "bids" / "manifest.tsv", dtype={"path": str})
    raw_files = sorted(p.relative_to(demo / "bids").as_posix() for p in (demo / "bids").rglob("*") if p.is_file())
    assert sorted(manifest["path"]) == raw_files
    for _, row in manifest.iterrows():
        assert sha256sum(demo / "bids" / row["path"]) == row["sha256"]
    bold = manifest[manifest["suffix"] == "bold"]
    bold = bold[bold["path"].str.endswith(".nii.gz")]
    assert (bold["tr"].astype(float) == 2.0).all()


def test_rerun_has_nothing_to_do(pipeline):
    demo, results, base, config = pipeline
    proc = run_snakemake(base, config, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_coarser_bold_is_resampled(tmp_path, atlas_dir):
    demo = make_demo(tmp_path / "demo4", atlas_dir, n_subjects=2, n_trs=40, bold_res=4, seed=5)
    results = tmp_path / "results"
    config = demo_config(demo, results)
    config["pretrain"]["batch_size"] = 2  # one training subject: 3 windows
    proc = run_snakemake(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    resampled = sorted((results / "fmriflow").glob("sub-*/func/*_desc-preproc_bold.nii.gz"))
    assert len(resampled) == 2
    for path in resampled:
        img = nib.load(path)
        assert img.shape[:3] == (91, 109, 91) and not path.is_symlink()
        assert json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())["Provenance"]["Parameters"]["resampled"]


def test_missing_derivative_is_named(tmp_path, atlas_dir):
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=7)
    victim = next((demo / "derivatives" / "fmriprep").glob("sub-02/func/*_desc-brain_mask.nii.gz"))
    victim.unlink()
    proc = run_snakemake(tmp_path, demo_config(demo, tmp_path / "results"))
    assert proc.returncode != 0
    assert "sub-02_task-rest_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz" in proc.stderr
    assert "not found" in proc.stderr
    assert not (tmp_path / "results" / "fmriflow").exists()


def test_second_atlas_equals_nilearn_on_its_resampled_grid(pipeline, a424_img):
    """The user's 4 mm atlas is put on the BOLD grid by nearest neighbour, as nilearn would."""
    from nilearn.image import resample_to_img

    _, results, base, _ = pipeline
    on_grid = results / "fmriflow/atlases/atlas-Groups/atlas-Groups_space-MNI152NLin6Asym_res-2_dseg.nii.gz"
    expected = resample_to_img(nib.load(base / "atlas" / "groups.nii.gz"), a424_img, interpolation="nearest")
    np.testing.assert_array_equal(np.asarray(nib.load(on_grid).dataobj), np.asarray(expected.dataobj))
    assert json.loads(on_grid.with_name(on_grid.name.replace(".nii.gz", ".json")).read_text())["Provenance"]["Parameters"]["Resampled"]
    for ts_path in _runs(results, "Groups"):
        stem = ts_path.name.split("_space-")[0]
        denoised = ts_path.with_name(f"{stem}_space-MNI152NLin6Asym_res-2_desc-denoised_bold.nii.gz")
        mask = ts_path.with_name(f"{stem}_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz")
        ref = NiftiLabelsMasker(labels_img=str(on_grid), mask_img=str(mask)).fit_transform(str(denoised))
        ours = read_tsv(ts_path)
        assert list(ours.columns) == ["CortexR", "CortexL", "Subcortex", "Cerebellum"]
        np.testing.assert_allclose(ours.to_numpy(), ref, atol=1e-5)


def test_partial_tangent_and_dynamic_outputs(pipeline):
    from nilearn.connectome import ConnectivityMeasure

    _, results, _, _ = pipeline
    group = results / "fmriflow" / "group"
    runs = _runs(results)
    for ts_path in runs:
        ts = read_tsv(ts_path)
        valid = np.isfinite(ts.to_numpy()).all(axis=0)
        partial = np.load(ts_path.with_name(ts_path.name.replace("stat-mean_timeseries.tsv", "stat-partialcorrelation_relmat.npy")))
        ref = ConnectivityMeasure(kind="partial correlation").fit_transform([ts.to_numpy()[:, valid]])[0]
        np.testing.assert_allclose(partial[np.ix_(valid, valid)], ref, atol=1e-8)
        dynamic = np.load(ts_path.with_name(ts_path.name.replace("stat-mean_timeseries.tsv", "stat-pearsoncorrelation_desc-dynamic_relmat.npy")))
        assert dynamic.shape == (3, 424, 424)  # windows of 30 volumes every 15 in 60
    for stat in ("pearsoncorrelation", "partialcorrelation", "tangent"):
        stack = np.load(group / f"space-MNI152NLin6Asym_res-2_atlas-A424_stat-{stat}_desc-stack_relmat.npy")
        listing = read_tsv(group / f"space-MNI152NLin6Asym_res-2_atlas-A424_stat-{stat}_desc-stack_runs.tsv", dtype=str)
        assert stack.shape == (4, 424, 424) and len(listing) == 4 and "response" in listing
    pearson = np.load(group / "space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_desc-stack_relmat.npy")
    first = np.load(runs[0].with_name(runs[0].name.replace("stat-mean_timeseries.tsv", "stat-pearsoncorrelation_relmat.npy")))
    np.testing.assert_array_equal(pearson[0], first)


def test_dataset_and_pretraining_ran(pipeline):
    """The DAG built the model-ready dataset and pretrained the tiny model on the CPU."""
    import torch

    _, results, _, _ = pipeline
    card = json.loads((results / "dataset" / "atlas-A424" / "dataset_card.json").read_text())
    assert card["n_regions"] == 424 and card["n_samples"] > 0
    samples = np.load(results / "dataset" / "atlas-A424" / "samples.npy", mmap_mode="r")
    assert samples.shape == (card["n_samples"], 424, 20)
    metrics = pd.read_csv(results / "pretrain" / "tiny" / "metrics.csv")
    assert metrics["step"].max() == 6 and metrics["val_loss"].notna().any()
    state = torch.load(results / "pretrain" / "tiny" / "model.pt", weights_only=False)
    assert state["model_name"] == "tiny" and state["model"]["coords"].shape == (424, 3)


def test_pretrain_rule_asks_for_gpus_and_launches_torchrun(tmp_path, atlas_dir):
    """With pretrain.gpus set, the job requests GPUs through the SLURM plugin's resources and runs torchrun."""
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=11)
    config = demo_config(demo, tmp_path / "results")
    config["pretrain"].update(gpus=2, gpu_model="h100", cpus_per_gpu=4, compile=True)
    proc = run_snakemake(tmp_path, config, "--dry-run", "--printshellcmds", "--forcerun", "pretrain",
                         str(tmp_path / "results" / "pretrain" / "tiny" / "model.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "-m torch.distributed.run --standalone --nproc-per-node 2 -m fmriflow.train" in out
    assert "--compile" in out and "--batch-size 4" in out
    resources = job_resources(out, "pretrain")
    for item in ("gpu=2", "gpu_model=h100", "cpus_per_gpu=4", "runtime=120"):  # (mem_mb is capped by the local profile)
        assert item in resources, resources


def test_rerun_from_raw_bids_is_byte_identical(tmp_path, atlas_dir):
    """Two runs in fresh folders (same relative paths) give byte-identical artefacts.

    Excluded: Snakemake's logs, the timing column of the training log and TensorBoard's event
    files (named by time and process id): measurements of the run, not artefacts.
    """
    import hashlib
    import shutil

    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=4, n_trs=60, bold_res=4, seed=13)
    config = demo_config(Path("demo"), Path("results"))
    config["atlas"] = {"cache_dir": "resources/atlases/A424"}
    digests = []
    for name in ("first", "second"):
        work = tmp_path / name
        work.mkdir()
        shutil.copytree(REPO / "config", work / "config")
        (work / "demo").symlink_to(demo)
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile",
                               str(REPO / "profiles" / "local"), "--cores", "2", "--configfile", "config.yaml"],
                              cwd=work, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = {}
        for path in sorted((work / "results").rglob("*")):
            rel = path.relative_to(work).as_posix()
            if not path.is_file() or rel.startswith("results/logs/") or "/tensorboard/" in rel:
                continue
            data = path.read_bytes()
            if path.name in ("train_log.csv", "metrics.csv"):
                data = pd.read_csv(path).drop(columns="samples_per_s").to_csv().encode()
            files[rel] = hashlib.sha256(data).hexdigest()
        digests.append(files)
    assert len(digests[0]) > 80
    assert digests[0] == digests[1]
