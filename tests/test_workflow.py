"""The real Snakemake DAG on a small demo dataset, checked against independent computations.

Runs ``snakemake --profile profiles/local`` as a user would, then recomputes the region
time series with nilearn's NiftiLabelsMasker and the FC with numpy's corrcoef.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
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


def run_snakemake(workdir: Path, config: dict, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2",
           "--configfile", str(cfg), "--directory", str(REPO), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)


def make_demo(out: Path, atlas_dir: Path, **kwargs) -> Path:
    from fmriflow.demo import generate_demo

    generate_demo(out, atlas_dir / "A424+2mm.nii.gz", atlas_dir / "A424_Coordinates.dat", jobs=2, **kwargs)
    return out


# The demo's settings (participants columns, planted edges, recipe), which `make demo` reads on top
# of config/config.yaml; the tests' configs go on top of them (run_snakemake's --configfile).
DEMO_YAML = REPO / "config" / "demo.yaml"


def demo_settings() -> dict:
    """config/demo.yaml as one project: `make demo` gives it an encoder bundle pretrained first by
    another project (config/demo-pretrain.yaml); the tests pretrain in the run instead."""
    settings = yaml.safe_load(DEMO_YAML.read_text())
    settings["pretrain"]["enabled"] = True
    settings["finetune"]["encoder"] = None
    return settings

# short runs: 24 regressors (36P leaves no degrees of freedom in 40 volumes), 20-TR
# windows, and a few pretraining steps of the tiny model
SHORT_RUNS = {
    "denoise": {"strategy": "24P"},
    "dataset": {"window": 20, "stride": 10, "fractions": [0.5, 0.25, 0.25]},
    "pretrain": {"max_steps": 6, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 3},
}


def merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section, as Snakemake merges config files (a copy)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else copy.deepcopy(value)
    return out


def demo_config(demo: Path, results: Path, **extra) -> dict:
    """The demo's settings (config/demo.yaml) for the small demo dataset ``demo``, at test size;
    ``extra`` replaces whole sections of the test's own settings, as before the demo's settings
    moved out of config/config.yaml (the resolved config is the same)."""
    return merged(demo_settings(), {
        "bids_dir": str(demo / "bids"),
        "output_dir": str(results),
        "preproc": {"mode": "derivatives", "derivatives_dir": str(demo / "derivatives" / "fmriprep")},
        "report": {"group_column": "response", "ground_truth": str(demo / "ground_truth" / "edges.tsv")},
        **SHORT_RUNS,
        # two variants, both baselines and the controls, at toy size
        "finetune": {"variants": ["concat", "ts_only"], "folds": 2, "max_epochs": 2, "min_epochs": 0, "patience": 1,
                     "permutations": 2,
                     "resnet_width": 2, "embed_dim": 16, "bootstrap": 20, "ig_steps": 4,
                     "setups": ["agnostic", "site"]},
        **extra,
    })


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
    # per run: preproc and denoise QC, BOLD, mask, denoised BOLD; per atlas: time series,
    # coverage, pearson and partial (TSV + NPY), dynamic FC
    assert len(files) == 4 * (5 + 2 * 7)
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


class _Report(HTMLParser):
    """The figure ids, table rows (by table id) and 'Not run' notes of the HTML report."""

    def __init__(self):
        super().__init__()
        self.figures, self.tables, self.not_run = [], {}, 0
        self._table = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(attrs["data-figure"])
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        self.not_run += data == "Not run:"


def test_report_shows_the_run_and_its_figures(pipeline):
    """The report of the DAG run: the excluded run with the QC table's reason, every fine-tuning set-up
    and variant, every figure also written for ``snakemake --report``, and no section left 'not run'."""
    _, results, _, _ = pipeline
    page = _Report()
    page.feed((results / "report" / "fmriflow_report.html").read_text(encoding="utf-8"))
    table = read_tsv(results / "fmriflow" / "group" / "desc-runs_qc.tsv", dtype={"run": str})
    excluded = table.loc[table["included"].astype(str) == "False"]
    rows = page.tables["exclusions"][1:]
    assert [(r[0], r[2]) for r in rows] == [(Path(excluded["run"].iloc[0]).name, excluded["exclusion_reasons"].iloc[0])]
    variants = read_tsv(results / "finetune" / "response" / "variants.tsv")
    shown = [(r[0], r[1]) for r in page.tables["finetune-variants"][1:]]
    assert shown == list(zip(variants["setup"].astype(str), variants["variant"]))
    assert page.not_run == 1  # the voxel models (voxel.enabled is false)
    for fig_id in ("qc-fd-trace", "qc-tsnr", f"qc-run-{Path(excluded['run'].iloc[0]).name.lower()}", "pretrain-curves",
                   "finetune-roc", "finetune-confusion", "attribution-modality", "attribution-brain"):
        assert fig_id in page.figures
    written = sorted(p.stem for p in (results / "report" / "figures").glob("*.png"))
    assert written == sorted(page.figures)


def test_snakemake_report_has_every_figure_with_its_caption(pipeline):
    """``snakemake --report report.zip`` after the run: the HTML report and every figure, each with
    its own caption from workflow/report/ (none falls back to the generic text)."""
    import zipfile

    _, results, base, config = pipeline
    archive = base / "snakemake_report.zip"
    proc = run_snakemake(base, config, "--report", str(archive))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        index = zf.read(f"{archive.stem}/report.html").decode("utf-8")  # the archive's folder is named after it
    figures = sorted(p.name for p in (results / "report" / "figures").glob("*.png"))
    assert sorted(Path(n).name for n in names if n.startswith(f"{archive.stem}/data/raw/") and n.endswith(".png")) == figures
    assert any(n.endswith("/fmriflow_report.html") for n in names)
    captions = re.findall(r'"caption": ?"((?:[^"\\]|\\.)*)"', index)
    assert len(captions) == len(figures) + 1  # and the HTML report's
    assert not any("of the HTML report; its caption there" in c for c in captions)
    n_runs_in_full = sum(name.startswith("qc-run-") for name in figures)  # the excluded run and the worst included
    assert n_runs_in_full == 2
    for words, count in (("Framewise displacement of every volume", 1), ("One run in full", n_runs_in_full),
                         ("ROC curves of every variant", 1), ("nilearn glass brain", 1), ("one self-contained page", 1)):
        assert sum(words in c for c in captions) == count, words


def test_rerun_has_nothing_to_do(pipeline):
    demo, results, base, config = pipeline
    proc = run_snakemake(base, config, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


# Config keys that name a participants.tsv column, and the steps they belong to.
COLUMN_KEYS = ("report.group_column", "dataset.stratify", "finetune.target", "finetune.drug_column",
               "finetune.site_column", "voxel.target")


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _without_demo_columns(demo: Path) -> Path:
    """The demo's participants.tsv (and its sidecar) cut to participant_id, age and sex: a dataset
    with none of the columns the demo's settings name."""
    participants = demo / "bids" / "participants.tsv"
    read_tsv(participants, dtype=str)[["participant_id", "age", "sex"]].to_csv(participants, sep="\t", index=False)
    sidecar = participants.with_suffix(".json")
    described = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({k: described[k] for k in ("participant_id", "age", "sex")}, indent=2))
    return participants


def user_config(demo: Path, results: Path, **extra) -> dict:
    """The shipped config/config.yaml with only the data's paths set (the demo ships fMRIPrep-shaped
    derivatives), and the sizes of short runs (SHORT_RUNS: no column named there)."""
    return merged({"bids_dir": str(demo / "bids"), "output_dir": str(results),
                   "preproc": {"mode": "derivatives", "derivatives_dir": str(demo / "derivatives" / "fmriprep")},
                   **SHORT_RUNS}, extra)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count of a dry run's "Job stats" table."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    table = text[text.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_shipped_config_runs_a_dataset_without_the_demo_columns(tmp_path, atlas_dir):
    """config/config.yaml names no participants column: with only the data's paths set it runs a
    dataset whose participants.tsv has participant_id, age and sex to the report, which says what
    did not run and why (no group column, fine-tuning and voxel models off)."""
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert {key: _get(shipped, key) for key in COLUMN_KEYS} == dict.fromkeys(COLUMN_KEYS)
    assert shipped["report"]["ground_truth"] is None and shipped["finetune"]["enabled"] is False
    assert shipped["pretrain"]["enabled"] is True
    assert not set(SHORT_RUNS["dataset"]) & {"stratify"}  # the short-run sizes name no column either
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=4, n_trs=60, bold_res=4, seed=17)
    _without_demo_columns(demo)
    results = tmp_path / "results"
    proc = run_snakemake(tmp_path, user_config(demo, results))
    assert proc.returncode == 0, proc.stderr[-5000:]
    html = (results / "report" / "fmriflow_report.html").read_text(encoding="utf-8")
    assert re.findall(r'<p class="notrun"><b>Not run:</b> (.*?)</p>', html) == [
        "group difference (report.group_column is null).",
        "voxel-level models (BrainMT, NeuroSTORM) (voxel.enabled is false).",
        "fine-tuning and evaluation (finetune.enabled is false).",
    ]
    assert (results / "pretrain" / "tiny" / "metrics.csv").is_file() and not (results / "finetune").exists()
    diff = json.loads((results / "fmriflow" / "group" /
                       "space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_desc-groupdiff_relmat.json").read_text())
    assert diff["GroupColumn"] is None and diff["Note"] == "report.group_column is null"


def test_config_naming_a_missing_column_fails_at_plan_time(tmp_path, atlas_dir):
    """Each participants column the config names for a step that runs is checked when the workflow is
    read (``snakemake -n``): every key at once, with the column, the file and the columns it has;
    fine-tuning without pretraining, or without a table that labels it, stops the plan too."""
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=19)
    participants = _without_demo_columns(demo)
    results = tmp_path / "results"
    demo_columns = user_config(demo, results, report={"group_column": "response"}, dataset={"stratify": "response"},
                               finetune={"enabled": True, "target": "response", "drug_column": "drug",
                                         "site_column": "site"},
                               voxel={"enabled": True, "target": "response"})
    proc = run_snakemake(tmp_path, demo_columns, "--dry-run")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{participants}: 6 config value(s) name a participants column it does not have:" in out
    has = "(its columns: ['participant_id', 'age', 'sex'])"
    for key, column, instead in (
            ("report.group_column", "response", "or null (no group comparison)"),
            ("dataset.stratify", "response", "or null (splits not stratified)"),
            ("finetune.target", "response", "or finetune.enabled: false"),
            ("finetune.drug_column", "drug", "or null (no drug-<value> set-ups)"),
            ("finetune.site_column", "site", "or null (no site-<value> set-ups)"),
            ("voxel.target", "response", "or voxel.enabled: false")):
        assert (f"  {key}: column '{column}' is not in the table {has}; set {key} to one of ['age', 'sex'], "
                f"{instead}") in out, key
    assert not results.exists()

    # fine-tuning needs pretraining (both keys named), and a target
    proc = run_snakemake(tmp_path, user_config(demo, results, pretrain={"enabled": False},
                                               finetune={"enabled": True, "target": "age"}), "--dry-run")
    assert proc.returncode != 0
    assert ("finetune.enabled: true needs pretrain.enabled: true (fine-tuning starts from the pretrained encoder and "
            "its dataset); set finetune.enabled: false, or pretrain.enabled: true") in proc.stdout + proc.stderr
    proc = run_snakemake(tmp_path, user_config(demo, results, finetune={"enabled": True}), "--dry-run")
    assert proc.returncode != 0
    assert ("finetune.target: null, but finetune.enabled is true and needs a column; set finetune.target to one of "
            "['age', 'sex'], or finetune.enabled: false") in proc.stdout + proc.stderr

    # a column that is there but cannot be a target: the plan says so (no longer left to the job)
    proc = run_snakemake(tmp_path, user_config(demo, results, finetune={"enabled": True, "target": "sex"}), "--dry-run")
    assert proc.returncode != 0
    assert (f"fine-tuning (finetune.enabled: true, finetune.target: 'sex') cannot label its subjects: "
            f"{participants}: column 'sex' must be numeric (0/1 for classes)") in proc.stdout + proc.stderr

    # no participants.tsv, while fine-tuning needs one
    participants.unlink()
    proc = run_snakemake(tmp_path, user_config(demo, results, finetune={"enabled": True, "target": "age"}), "--dry-run")
    assert proc.returncode != 0
    assert (f"{participants}: participants table not found, but the config names its columns (finetune.target): "
            "add the table, or set finetune.enabled: false") in proc.stdout + proc.stderr
    assert not results.exists()


def test_pretraining_off_plans_no_dataset_pretraining_or_finetuning(tmp_path, atlas_dir):
    """pretrain.enabled: false leaves the dataset, pretraining and fine-tuning out of the plan; the
    report still runs (its Pretraining section then says "Not run", tests/test_report.py)."""
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=23)
    results = tmp_path / "results"
    modelling = {"dataset", "pretrain", "bundle", "finetune_features", "finetune", "finetune_table"}
    on = planned_jobs(run_snakemake(tmp_path, demo_config(demo, results), "--dry-run"))
    assert set(on) >= modelling | {"report"}  # the demo's settings: all of them
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, results, pretrain={"enabled": False},
                                                            finetune={"enabled": False}), "--dry-run"))
    assert not set(off) & modelling and off["report"] == 1 and off["connectivity_stack"] == 1
    assert set(on) - set(off) == modelling


def test_coarser_bold_is_resampled(tmp_path, atlas_dir):
    demo = make_demo(tmp_path / "demo4", atlas_dir, n_subjects=2, n_trs=40, bold_res=4, seed=5)
    results = tmp_path / "results"
    config = demo_config(demo, results)
    config["pretrain"]["batch_size"] = 2  # one training subject: 3 windows
    # two subjects: once QC has spoken the cohort may hold one class, nothing to fine-tune
    # (this test is about resampling; fine-tuning has its own DAG test)
    config["finetune"]["enabled"] = False
    # 40 volumes: 24P leaves sub-01 8 degrees of freedom (6 volumes censored) and sub-02 14; a
    # minimum of 8 lets both be denoised, and the censoring threshold keeps QC's cohort (sub-02)
    config["qc"] = {"min_degrees_of_freedom": 8, "max_fraction_censored": 0.1}
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
        assert stack.shape == (3, 424, 424) and len(listing) == 3 and "response" in listing  # QC kept 3 runs
    pearson = np.load(group / "space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_desc-stack_relmat.npy")
    kept = [r for r in runs if r.name.split("_space-")[0] in set(listing["run"].str.split("/").str[-1])]
    first = np.load(kept[0].with_name(kept[0].name.replace("stat-mean_timeseries.tsv", "stat-pearsoncorrelation_relmat.npy")))
    np.testing.assert_array_equal(pearson[0], first)


def test_qc_excludes_a_run_from_pooled_steps(pipeline):
    """The run over the mean-FD threshold is listed with its reason and reaches no pooled step."""
    demo, results, _, config = pipeline
    table = read_tsv(results / "fmriflow" / "group" / "desc-runs_qc.tsv", dtype={"run": str})
    assert len(table) == 4
    truth = json.loads((demo / "ground_truth" / "ground_truth.json").read_text())["subjects"]
    worst = max(truth, key=lambda s: truth[s]["mean_framewise_displacement"])
    excluded = table.loc[table["included"].astype(str) == "False"]
    assert excluded["subject"].astype(str).str.zfill(2).tolist() == [worst.removeprefix("sub-")]
    assert excluded["exclusion_reasons"].iloc[0].startswith("mean FD ")
    assert excluded["mean_fd"].iloc[0] == pytest.approx(truth[worst]["mean_framewise_displacement"], abs=1e-5)
    for column in ("max_fd", "fraction_censored", "mean_dvars", "median_tsnr", "region_coverage"):
        assert table[column].notna().all(), column
    run = excluded["run"].iloc[0]
    group = results / "fmriflow" / "group"
    for listing in group.glob("*_desc-stack_runs.tsv"):
        assert run not in set(read_tsv(listing, dtype=str)["run"])
    card = json.loads((results / "dataset" / "atlas-A424" / "dataset_card.json").read_text())
    assert sorted(r["run"] for r in card["runs"]) == sorted(set(table["run"]) - {run})
    fc_mean = json.loads((group / "space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_desc-mean_relmat.json").read_text())
    assert not any(worst in source for source in fc_mean["Sources"]) and len(fc_mean["Sources"]) == 3


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


def _kill_while_writing(cmd: list[str], work: Path, pattern: str) -> Path:
    """Start ``cmd`` (Snakemake) and SIGKILL it with its jobs once a file matching ``pattern`` is being written."""
    import os
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            caught = sorted((work / "results" / "fmriflow").glob(pattern))
            if caught:
                os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job it started
                proc.wait()
                return caught[0]
            time.sleep(0.02)
        raise AssertionError(f"never caught a write of {pattern} in progress (exit {proc.poll()})")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_rerun_from_raw_bids_is_byte_identical(tmp_path, atlas_dir):
    """Two runs in fresh folders (same relative paths) give byte-identical artefacts, although
    the second is killed (SIGKILL, Snakemake and its jobs) while it writes a denoised BOLD and
    is then rerun as Snakemake's message says (``--unlock``, then the same command).

    Every file under results/ is compared except Snakemake's logs, TensorBoard's event files
    (named by time and process id) and the measured samples/s of the training logs (with the
    checksum the metrics' sidecar and the report record of them): measurements of the run, not
    artefacts.
    The first run's folder is then moved, and ``fmriflow audit`` still follows and verifies
    every recorded checksum from the trained model back to the raw inputs.
    """
    import hashlib
    import json
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
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile",
               str(REPO / "profiles" / "local"), "--cores", "2", "--configfile", "config.yaml"]
        if name == "second":
            partial = _kill_while_writing(cmd, work, "sub-*/func/.*_desc-denoised_bold.nii.gz.*.tmp.nii.gz")
            final = partial.with_name(partial.name[1:].split(".nii.gz.")[0] + ".nii.gz")
            assert partial.exists() and not final.exists()  # only a hidden temporary, nothing that looks done
            locked = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
            assert locked.returncode != 0 and "--unlock" in locked.stderr
            assert subprocess.run([*cmd, "--unlock"], cwd=work, capture_output=True, timeout=300).returncode == 0
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = {}
        # the measured metrics.csv's checksum, wherever a later file records it (the report, the encoder
        # bundle's card and their sidecars)
        measured = hashlib.sha256((work / "results/pretrain/tiny/metrics.csv").read_bytes()).hexdigest().encode()
        for path in sorted((work / "results").rglob("*")):
            rel = path.relative_to(work).as_posix()
            if not path.is_file() or rel.startswith("results/logs/") or "/tensorboard/" in rel:
                continue
            data = path.read_bytes()
            if path.suffix in (".html", ".json"):
                data = data.replace(measured, b"<sha256 of the measured metrics.csv>")
            if path.name in ("train_log.csv", "metrics.csv"):
                data = pd.read_csv(path).drop(columns="samples_per_s").to_csv().encode()
            if path.name in ("metrics.json", "fmriflow_report.json"):  # their artefact holds the measurement
                record = json.loads(data)
                del record["Provenance"]["Output"]["sha256"]
                data = json.dumps(record).encode()
            if path.name == "model.safetensors.json":  # the bundle's card (an output it lists) holds the measurement
                record = json.loads(data)
                for output in record["Provenance"]["Outputs"]:
                    if output["path"].endswith("model_card.json"):
                        del output["sha256"]
                data = json.dumps(record).encode()
            files[rel] = hashlib.sha256(data).hexdigest()
        digests.append(files)
    assert len(digests[0]) > 80
    assert digests[0] == digests[1], sorted(k for k in digests[0].keys() | digests[1].keys()
                                            if digests[0].get(k) != digests[1].get(k))

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    (tmp_path / "first").rename(moved)
    proc = subprocess.run([sys.executable, "-m", "fmriflow.cli", "audit", str(moved / "results/pretrain/tiny/model.pt")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tree = proc.stdout
    assert "elsewhere/project/demo/bids/sub-01/func/sub-01_task-rest_bold.nii.gz  [raw input] ok" in tree
    assert "elsewhere/project/resources/atlases/A424/A424+2mm.nii.gz  [raw input] ok" in tree
    assert "first/" not in tree


# Run records, not artefacts: the training's own state and logs, the BIDS-required description, and
# the empty marker Snakemake leaves in a directory output (the report's figures).
_NOT_ARTEFACTS = ("checkpoint.pt", "train_log.csv", "dataset_description.json", ".snakemake_timestamp")


def test_every_artefact_has_provenance(pipeline):
    """Each file under results/ carries its own sha256 in a provenance record: its sidecar, a JSON
    artefact's own Provenance or the sidecar of the step that wrote it with others, or the dataset
    card for the files of the dataset folder."""
    import hashlib

    _, results, _, _ = pipeline
    checked = 0
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        rel = path.relative_to(results).as_posix()
        if rel.startswith("logs/") or "/tensorboard/" in rel or path.name in _NOT_ARTEFACTS:
            continue
        stem = path.name.split(".")[0]
        if path.suffix == ".json":
            if any(p != path for p in path.parent.glob(f"{stem}.*")):
                continue  # a sidecar: checked with its artefact
            if "Provenance" not in json.loads(path.read_text()):  # else listed by a sibling's sidecar, with its
                # sha256, among the outputs of one step (the bundle's config.json, beside model.safetensors.json)
                records = [json.loads(p.read_text()) for p in path.parent.glob("*.json") if p != path]
                listed = {Path(o["path"]).name: o["sha256"] for r in records if isinstance(r, dict)
                          for o in r.get("Provenance", {}).get("Outputs", [])}
                assert listed.get(path.name) == hashlib.sha256(path.read_bytes()).hexdigest(), rel
            continue
        # BIDS names its sidecar by the stem (bold.nii.gz: bold.json); model.safetensors keeps its extension
        sidecar = next((s for s in (path.with_name(stem + ".json"), path.with_name(path.name + ".json")) if s.is_file()),
                       path.parent / "dataset_card.json")
        record = json.loads(sidecar.read_text())["Provenance"]
        described = {Path(o["path"]).name: o["sha256"] for o in [record.get("Output", {}), *record.get("Outputs", [])] if o}
        assert described.get(path.name) == hashlib.sha256(path.read_bytes()).hexdigest(), rel
        checked += 1
    assert checked > 100


def _audit(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "fmriflow.cli", "audit", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_audit_walks_to_raw_inputs_and_names_what_changed(pipeline):
    """fmriflow audit on real DAG outputs: untouched passes; a changed intermediate file, or a
    missing sidecar, fails with its name and which record disagrees."""
    demo, results, _, _ = pipeline
    report = results / "report" / "fmriflow_report.html"
    proc = _audit(report)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{demo}/bids/sub-02/func/sub-02_task-rest_bold.nii.gz  [raw input] ok" in proc.stdout
    assert "resources/atlases/A424/A424+2mm.nii.gz  [raw input] ok" in proc.stdout
    assert proc.stdout.rstrip().endswith("every checksum matches")

    func = results / "fmriflow" / "sub-02" / "func"
    timeseries = func / "sub-02_task-rest_space-MNI152NLin6Asym_res-2_atlas-A424_stat-mean_timeseries.tsv"
    relmat = timeseries.with_name(timeseries.name.replace("stat-mean_timeseries", "stat-pearsoncorrelation_relmat"))
    good = timeseries.read_bytes()
    try:
        timeseries.write_bytes(good.replace(b"\n", b"\n-", 1))  # the first value of the first time point changed
        proc = _audit(relmat)
        assert proc.returncode == 1
        assert (f"{timeseries}: sha256 {hashlib.sha256(timeseries.read_bytes()).hexdigest()} differs from "
                f"{hashlib.sha256(good).hexdigest()} recorded in {timeseries.with_suffix('.json')} when it was written") in proc.stderr
        assert f"recorded in {relmat.with_suffix('.json')} for its input {timeseries}" in proc.stderr
        assert f"{timeseries.name}  [parcellate] FAILED" in proc.stdout
    finally:
        timeseries.write_bytes(good)

    denoised_sidecar = func / "sub-02_task-rest_space-MNI152NLin6Asym_res-2_desc-denoised_bold.json"
    hidden = denoised_sidecar.with_name("moved-away.json.bak")
    denoised_sidecar.rename(hidden)
    try:
        proc = _audit(relmat)
        assert proc.returncode == 1
        assert (f"{denoised_sidecar.with_name(denoised_sidecar.stem + '.nii.gz')}: no provenance sidecar "
                f"(expected {denoised_sidecar})") in proc.stderr
    finally:
        hidden.rename(denoised_sidecar)
    assert _audit(relmat).returncode == 0


def test_finetune_predicts_every_subject_once_per_repeat(pipeline):
    """Subject-level CV: each labelled subject is a test subject exactly once per repeat; the
    metrics table equals scikit-learn's metrics recomputed from the predictions file."""
    from sklearn.metrics import matthews_corrcoef, roc_auc_score

    demo, results, _, _ = pipeline
    participants = read_tsv(demo / "bids" / "participants.tsv", dtype={"participant_id": str})
    labels = dict(zip(participants.participant_id.str.removeprefix("sub-"), participants.response))
    in_dataset = set(read_tsv(results / "dataset" / "atlas-A424" / "index.tsv", dtype={"subject": str}).subject)
    labels = {s: y for s, y in labels.items() if s in in_dataset}  # QC may have excluded a run
    root = results / "finetune" / "response"
    table = read_tsv(root / "variants.tsv")
    setups = ["agnostic"] + [f"site-{s}" for s in sorted(participants.site.unique())]
    expected = {"concat", "ts_only", "logistic", "ridge", "permuted_concat", "permuted_logistic", "probe", "probe_random"}
    for setup in setups:
        assert set(table.loc[table.setup == setup, "variant"]) == expected
        preds = read_tsv(root / f"setup-{setup}" / "predictions.tsv", dtype={"subject": str})
        for (variant, repeat, permutation), frame in preds.groupby(["variant", "repeat", "permutation"]):
            assert frame.subject.is_unique
            assert permutation == 0 or variant.startswith("permuted_")
            assert (frame.label == frame.subject.map(labels)).all()
        controls = preds[preds.variant.str.startswith("permuted_")]
        assert set(controls.permutation) == {0, 1}  # finetune.permutations: 2
        if setup == "agnostic":
            assert set(preds.subject) == set(labels)
            folds = read_tsv(root / f"setup-{setup}" / "folds.tsv", dtype={"subject": str})
            for _, fold in folds.groupby(["repeat", "fold"]):
                roles = fold.groupby("subject").role.nunique()
                assert (roles == 1).all()  # no subject in two roles of one fold
        metrics = read_tsv(root / f"setup-{setup}" / "metrics.tsv")
        for _, row in metrics.iterrows():
            frame = preds[preds.variant == row.variant]
            assert row.mcc_pooled == pytest.approx(matthews_corrcoef(frame.label, frame.score >= 0.5))
            if frame.label.nunique() == 2:
                assert row.auroc_pooled == pytest.approx(roc_auc_score(frame.label, frame.score))
    assert not (root / "setup-site-site1" / "attribution_modality.tsv").exists()  # agnostic only
    shares = read_tsv(root / "setup-agnostic" / "attribution_modality.tsv")
    assert np.allclose(shares.ts_share + shares.fc_share, 1) and ((shares.ts_share > 0) & (shares.ts_share < 1)).all()
    regions = read_tsv(root / "setup-agnostic" / "attribution_regions.tsv")
    assert len(regions) == 424 and list(regions["rank"]) == list(range(1, 425))
