"""Tests of fmriflow.report: the self-contained HTML report.

Scope: the page is written, links to nothing outside itself, embeds valid PNGs, names the
source of every figure, shows the QC, exclusion, tSNR, training, ROC / confusion (against
scikit-learn) and ground-truth numbers of its inputs, shows disabled steps as "not run",
writes its figures with sidecars for ``snakemake --report``, rejects bad inputs naming the
file, and is byte-identical across builds. Inputs are small and synthetic.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmriflow.errors import InputError
from fmriflow.io import write_json, write_tsv
from fmriflow.provenance import sidecar_path
from fmriflow.report import build_report

N_REGIONS = 424
SUBJECTS = ["01", "02", "03", "04"]
RESPONSE = {"01": 0, "02": 1, "03": 0, "04": 1}
PLANTED = [(1, 2, 0.4), (181, 361, -0.3), (397, 424, 0.5)]
DROPPED_LABEL = 10  # region dropped in sub-02's run
MAX_MEAN_FD = 0.2  # excludes sub-03 and sub-04 (mean FD 0.1 + 0.0712 k)
GRID = (8, 9, 7)  # small BOLD images: carpet plots and tSNR maps
N_VOLUMES = 30
SECTIONS = ["summary", "dataset", "run-qc", "coverage", "connectivity", "pretraining", "finetuning", "provenance"]
ENTITIES = "_space-MNI152NLin6Asym_res-2_atlas-A424"


def _names() -> list[str]:
    out = []
    for k in range(1, N_REGIONS + 1):
        group = "Cortex" if k <= 360 else "Subcortex" if k <= 396 else "Cerebellum"
        hemi = "R" if k <= 180 else "L" if k <= 360 else "R" if k % 2 else "L"
        out.append(f"{group}_{hemi}_{k:03d}")
    return out


def _fc(rng: np.random.Generator, responder: bool) -> np.ndarray:
    series = rng.standard_normal((60, N_REGIONS))
    if responder:  # plant the edges: shared signal raises (or lowers) their correlation
        for i, j, delta in PLANTED:
            shared = rng.standard_normal(60)
            series[:, i - 1] += shared
            series[:, j - 1] += np.sign(delta) * shared
    return np.corrcoef(series, rowvar=False)


def _matrix_tsv(path: Path, values: np.ndarray, names: list[str]) -> None:
    write_tsv(path, pd.DataFrame(values, index=pd.Index(names, name="Node"), columns=names), index=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report_inputs")
    rng = np.random.default_rng(0)
    names = _names()
    participants = root / "participants.tsv"
    write_tsv(participants, pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in SUBJECTS],
        "age": [31.5, 44.0, np.nan, 28.25],
        "sex": ["F", "M", "F", "n/a"],
        "response": [RESPONSE[s] for s in SUBJECTS],
        "site": ["01", "01", "02", "02"],
    }))
    manifest = root / "manifest.tsv"
    write_tsv(manifest, pd.DataFrame({
        "path": [f"sub-{s}/func/sub-{s}_task-rest_bold.nii.gz" for s in SUBJECTS],
        "sha256": [f"{k:064x}" for k in range(len(SUBJECTS))],
        "subject": SUBJECTS, "session": [None] * 4, "task": ["rest"] * 4, "run": [None] * 4,
        "suffix": ["bold"] * 4, "shape": ["91x109x91x60"] * 4, "tr": [2.0] * 4,
    }))
    validation = root / "validation.json"
    write_json(validation, {
        "validator": "bids-validator-deno", "validator_version": "1.0", "n_errors": 1, "n_warnings": 2,
        "errors": ["CODE_X: sub-03 <script>alert(1)</script>"], "warnings": ["README_MISSING", "TSV_ADDITIONAL"],
        "summary": {"subjects": SUBJECTS},
    })
    qc, coverage, mean_fd = [], [], {}
    for k, s in enumerate(SUBJECTS):
        func = root / f"sub-{s}" / "func"
        run = f"sub-{s}/func/sub-{s}_task-rest"
        mean_fd[f"sub-{s}_task-rest"] = 0.1 + 0.0712345 * k
        path = func / f"sub-{s}_task-rest{ENTITIES}_desc-preproc_qc.tsv"
        write_tsv(path, pd.DataFrame([{
            "run": run, "subject": s, "n_volumes": 60, "tr": 2.0, "grid": "91x109x91", "voxel_size_mm": 2.0,
            "brain_voxels": 200000, "mean_fd": mean_fd[f"sub-{s}_task-rest"], "max_fd": 0.6 + 0.1 * k,
            "fd_threshold": 0.5, "n_high_motion": k, "mean_std_dvars": 1.01,
        }]))
        qc.append(str(path))
        cov = rng.uniform(0.6, 1.0, N_REGIONS)
        used = np.ones(N_REGIONS, dtype=bool)
        if s == "02":
            cov[DROPPED_LABEL - 1], used[DROPPED_LABEL - 1] = 0.2, False
        path = func / f"sub-{s}_task-rest{ENTITIES}_stat-coverage_bold.tsv"
        write_tsv(path, pd.DataFrame({
            "index": np.arange(1, N_REGIONS + 1), "name": names, "n_voxels": 50,
            "n_voxels_in_mask": np.round(cov * 50).astype(int), "coverage": cov, "used": used,
        }))
        coverage.append(str(path))

    fcs = {s: _fc(rng, bool(RESPONSE[s])) for s in SUBJECTS}
    fcs["02"][DROPPED_LABEL - 1, :] = fcs["02"][:, DROPPED_LABEL - 1] = np.nan
    group = root / "group"
    group_fc = group / f"task-rest{ENTITIES}_stat-pearsoncorrelation_desc-mean_relmat.tsv"
    _matrix_tsv(group_fc, np.nanmean(np.stack(list(fcs.values())), axis=0), names)
    by = {g: np.mean([fcs[s] for s in SUBJECTS if RESPONSE[s] == g], axis=0) for g in (0, 1)}
    group_diff = group / f"task-rest{ENTITIES}_stat-pearsoncorrelation_desc-diff_relmat.tsv"
    _matrix_tsv(group_diff, by[1] - by[0], names)
    write_json(sidecar_path(group_diff), {"GroupColumn": "response", "Levels": ["0", "1"], "N": {"0": 2, "1": 2},
                                          "Contrast": "1 minus 0"})
    edges = root / "ground_truth_edges.tsv"
    write_tsv(edges, pd.DataFrame([{
        "region_i": i, "region_j": j, "name_i": names[i - 1], "name_j": names[j - 1],
        "corr_nonresponder": 0.0, "corr_responder": d, "delta": d} for i, j, d in PLANTED]))
    config = {"bids_dir": "data/demo/bids", "preproc": {"mode": "lite"}, "parcellate": {"min_coverage": 0.5},
              "report": {"group_column": "response"}, "qc": {"max_mean_fd": MAX_MEAN_FD, "min_tsnr": None},
              "denoise": {"fd_threshold": 0.5}, "pretrain": {"model": "tiny"},
              "finetune": {"enabled": True, "target": "response", "baselines": ["logistic"]}, "voxel": {"enabled": False}}
    run_qc = group / "desc-runs_qc.tsv"
    write_tsv(run_qc, pd.DataFrame([{
        "run": f"sub-{s}/func/sub-{s}_task-rest", "subject": s, "mean_fd": mean_fd[f"sub-{s}_task-rest"],
        "fraction_censored": 0.1, "median_tsnr": 40.0 + k, "included": mean_fd[f"sub-{s}_task-rest"] <= MAX_MEAN_FD,
        "exclusion_reasons": (f"mean FD {mean_fd[f'sub-{s}_task-rest']:.3g} mm > {MAX_MEAN_FD:g} mm"
                              if mean_fd[f"sub-{s}_task-rest"] > MAX_MEAN_FD else "n/a"),
    } for k, s in enumerate(SUBJECTS)]))
    run_files, images = {}, root / "images"
    labels_img = nib.Nifti1Image(rng.integers(1, N_REGIONS + 1, GRID).astype(np.int16), np.eye(4))
    atlas_image = images / "atlas_dseg.nii.gz"
    images.mkdir()
    nib.save(labels_img, atlas_image)
    for k, s in enumerate(SUBJECTS):
        label = f"sub-{s}_task-rest"
        mask = np.zeros(GRID, dtype=np.uint8)
        mask[1:-1, 1:-1, 1:-1] = 1
        bold = 100.0 + (1 + k) * rng.standard_normal((*GRID, N_VOLUMES))
        files = {"mask": images / f"{label}_mask.nii.gz", "bold": images / f"{label}_bold.nii.gz",
                 "denoised": images / f"{label}_denoised.nii.gz", "confounds": images / f"{label}_confounds.tsv"}
        nib.save(nib.Nifti1Image(mask, np.eye(4)), files["mask"])
        nib.save(nib.Nifti1Image(bold.astype(np.float32), np.eye(4)), files["bold"])
        nib.save(nib.Nifti1Image((bold - bold.mean(axis=3, keepdims=True)).astype(np.float32), np.eye(4)), files["denoised"])
        fd = np.r_[np.nan, rng.uniform(0, 2 * mean_fd[label], N_VOLUMES - 1)]
        write_tsv(files["confounds"], pd.DataFrame({"framewise_displacement": fd, "trans_x": 0.0}))
        run_files[f"sub-{s}/func/{label}"] = {kind: str(path) for kind, path in files.items()}
    atlas_labels = images / "atlas-A424_dseg.tsv"
    write_tsv(atlas_labels, pd.DataFrame({"index": np.arange(1, N_REGIONS + 1), "name": names,
                                          "x": rng.uniform(-60, 60, N_REGIONS), "y": rng.uniform(-90, 60, N_REGIONS),
                                          "z": rng.uniform(-40, 70, N_REGIONS)}))
    metrics = root / "pretrain" / "metrics.csv"
    metrics.parent.mkdir()
    pd.DataFrame({"step": [0, 1, 2, 2, 3, 4, 4], "train_loss": [np.nan, 1.0, 0.9, np.nan, 0.8, 0.7, np.nan],
                  "val_loss": [1.2, np.nan, np.nan, 0.95, np.nan, np.nan, 1.0], "lr": [np.nan, 1e-4, 2e-4, np.nan, 2e-4, 1e-4, np.nan],
                  "grad_norm": np.nan, "samples_per_s": np.nan}).to_csv(metrics, index=False)
    finetune = _finetune_outputs(root / "finetune" / "response", rng, names)
    kwargs = dict(participants=participants, manifest=manifest, validation=validation, qc=qc, coverage=coverage,
                  group_fc=group_fc, group_diff=group_diff, ground_truth_edges=edges, config=config, run_qc=run_qc,
                  run_files=run_files, atlas_image=atlas_image, atlas_labels=atlas_labels, pretrain_metrics=metrics,
                  finetune_table=finetune["table"], predictions=finetune["predictions"])
    return {"root": root, "kwargs": kwargs, "mean_fd": mean_fd}


def _finetune_outputs(root: Path, rng: np.random.Generator, names: list[str]) -> dict:
    """Fine-tuning outputs as the finetune rules write them: predictions with tied scores, two set-ups."""
    predictions, rows = [], []
    for setup, n in (("agnostic", 12), ("site-01", 6)):
        frames = []
        for variant in ("concat", "logistic", "permuted_concat"):
            labels = np.tile([0, 1], n // 2)
            scores = np.round(np.clip(0.5 + 0.3 * (labels - 0.5) + 0.25 * rng.standard_normal(n), 0, 1), 1)  # ties
            frames.append(pd.DataFrame({"setup": setup, "variant": variant, "repeat": 0, "fold": np.arange(n) % 3,
                                        "subject": [f"{k:02d}" for k in range(n)], "label": labels, "score": scores}))
            rows.append({"setup": setup, "variant": variant, "n_subjects": n, "n_folds": 3,
                         **{f"{m}_{stat}": v for m in ("mcc", "auroc", "balanced_accuracy")
                            for stat, v in (("mean", 0.5), ("sd", 0.1), ("pooled", 0.55), ("ci_low", 0.3), ("ci_high", 0.8))}})
        path = root / f"setup-{setup}" / "predictions.tsv"
        write_tsv(path, pd.concat(frames, ignore_index=True))
        predictions.append(str(path))
    table = root / "variants.tsv"
    write_tsv(table, pd.DataFrame(rows))
    agnostic = root / "setup-agnostic"
    write_tsv(agnostic / "attribution_modality.tsv", pd.DataFrame({
        "setup": "agnostic", "site": ["01", "02"], "ts": [3.0, 1.0], "fc": [1.0, 3.0], "ts_share": [0.75, 0.25],
        "fc_share": [0.25, 0.75]}))
    ts, fc = rng.uniform(0, 1, N_REGIONS), rng.uniform(0, 1, N_REGIONS)
    regions = pd.DataFrame({"region": np.arange(1, N_REGIONS + 1), "name": names, "ts": ts, "fc": fc})
    regions["total"] = ts / ts.sum() + fc / fc.sum()
    regions = regions.sort_values("total", ascending=False, kind="stable")
    regions["rank"] = np.arange(1, N_REGIONS + 1)
    write_tsv(agnostic / "attribution_regions.tsv", regions)
    return {"table": str(table), "predictions": predictions}


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = build_report(out, **inputs["kwargs"])
    text = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return {"out": out, "summary": summary, "text": text, "page": page}


class _Page(HTMLParser):
    """Collects image sources, attributes naming resources, figure captions and table cells."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.resource_attrs: list[tuple[str, str, str]] = []
        self.captions: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._caption: list[str] | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "data", "srcset", "poster"):
            if name in attrs:
                self.resource_attrs.append((tag, name, attrs[name]))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "figcaption":
            self._caption = []
        elif tag == "table":
            self._table = attrs.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.captions.append("".join(self._caption))
            self._caption = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _rows(page: _Page, table_id: str) -> list[dict[str, str]]:
    header, *rows = page.tables[table_id]
    return [dict(zip(header, row)) for row in rows]


def test_report_is_written_with_all_sections(built):
    assert built["out"].is_file()
    assert built["summary"]["sections"] == SECTIONS
    for section in built["summary"]["sections"]:
        assert f'<section id="{section}">' in built["text"]
    assert built["summary"]["n_subjects"] == 4 and built["summary"]["n_runs"] == 4
    assert built["summary"]["dropped_regions"] == [_names()[DROPPED_LABEL - 1]]


def test_images_are_embedded_pngs(built):
    images = built["page"].images
    ids = [f["id"] for f in built["summary"]["figures"]]
    assert ids == ["qc-fd", "qc-fd-trace", "qc-tsnr", "qc-run-sub-04_task-rest", "qc-run-sub-03_task-rest",
                   "qc-run-sub-02_task-rest", "coverage", "fc-mean", "fc-groupdiff", "pretrain-curves", "finetune-roc",
                   "finetune-confusion", "attribution-modality", "attribution-brain"]
    assert len(images) == len(ids)
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 0 and height > 0


def test_page_links_to_nothing_outside_itself(built):
    text = built["text"].lower()
    assert "http://" not in text and "https://" not in text
    for tag, name, value in built["page"].resource_attrs:
        assert value.startswith(("data:", "#")), (tag, name, value)
    assert "<script" not in text and "<link" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in built["text"]  # input text is escaped


def test_each_caption_names_its_sources(built):
    figures, captions = built["summary"]["figures"], built["page"].captions
    assert len(captions) == len(figures)
    for figure, caption in zip(figures, captions):
        assert figure["sources"]
        for source in figure["sources"]:
            assert source in caption
    by_id = {f["id"]: f["sources"] for f in figures}
    assert Path(by_id["fc-mean"][0]).name.endswith("desc-mean_relmat.tsv")
    assert [Path(p).parent.name for p in by_id["finetune-roc"]] == ["setup-agnostic", "setup-site-01"]
    assert Path(by_id["attribution-brain"][0]).name == "attribution_regions.tsv"


def test_qc_table_has_one_row_per_run_with_its_mean_fd(built, inputs):
    rows = _rows(built["page"], "qc-table")
    assert [r["Run"] for r in rows] == sorted(inputs["mean_fd"])
    for row in rows:
        assert row["Mean FD (mm)"] == f"{inputs['mean_fd'][row['Run']]:.3f}"
    dropped = {r["Run"]: r["Regions dropped"] for r in rows}
    assert dropped == {"sub-01_task-rest": "0", "sub-02_task-rest": "1", "sub-03_task-rest": "0", "sub-04_task-rest": "0"}
    assert {r["Subject"] for r in rows} == set(SUBJECTS)


def test_ground_truth_table_shows_the_observed_difference(built, inputs):
    diff = pd.read_csv(inputs["kwargs"]["group_diff"], sep="\t", index_col=0).to_numpy()
    upper = np.abs(diff[np.triu_indices(N_REGIONS, k=1)])
    upper = upper[np.isfinite(upper)]  # edges of the region dropped in one run are undefined
    rows = _rows(built["page"], "ground-truth")
    assert len(rows) == len(PLANTED)
    for row, (i, j, delta) in zip(rows, PLANTED):
        assert (int(row["Label i"]), int(row["Label j"])) == (i, j)
        assert float(row["Observed difference"]) == pytest.approx(diff[i - 1, j - 1], abs=6e-5)
        assert float(row["Planted delta"]) == pytest.approx(delta)
        assert int(row["Rank by |observed|"]) == 1 + int((upper > abs(diff[i - 1, j - 1])).sum())
    gt = built["summary"]["ground_truth"]
    assert gt["n_planted"] == 3 and gt["n_edges"] == upper.size


def test_group_comparison_and_provenance_are_shown(built, inputs):
    page = built["page"]
    meta = {r["Key"]: r["Value"] for r in _rows(page, "group-comparison")}
    assert meta["GroupColumn"] == "response" and meta["Contrast"] == "1 minus 0"
    software = {r["Key"] for r in _rows(page, "software")}
    assert {"fmriflow", "python", "numpy", "matplotlib"} <= software
    manifest = _rows(page, "manifest")
    assert [r["sha256"] for r in manifest] == [f"{k:064x}" for k in range(4)]
    assert "min_coverage: 0.5" in built["text"]  # the config, as YAML
    assert "lite" in built["text"]
    counts = {r["Column"]: r["Summary"] for r in _rows(page, "group-counts")}
    assert counts["response"] == "0: 2 \u00b7 1: 2"
    assert counts["site"] == "01: 2 \u00b7 02: 2"  # text stays text
    assert counts["age"].startswith("n=3, mean")


def test_two_builds_are_byte_identical(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside any git checkout whose state might change between builds
    a, b = tmp_path / "a" / "report.html", tmp_path / "b" / "report.html"
    build_report(a, **inputs["kwargs"])
    build_report(b, **inputs["kwargs"])
    assert a.read_bytes() == b.read_bytes()


def test_optional_inputs_can_be_left_out(inputs, tmp_path):
    kwargs = {**inputs["kwargs"], "group_diff": None, "ground_truth_edges": None, "config": None, "run_qc": None,
              "run_files": None, "pretrain_metrics": None, "finetune_table": None, "predictions": []}
    summary = build_report(tmp_path / "r.html", **kwargs)
    assert [f["id"] for f in summary["figures"]] == ["qc-fd", "coverage", "fc-mean"] and summary["ground_truth"] is None
    assert summary["sections"] == SECTIONS
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.count("<b>Not run:</b>") == 4  # exclusions, carpet plots, pretraining, fine-tuning


def test_missing_qc_file_is_named(inputs, tmp_path):
    missing = tmp_path / "sub-09_task-rest_desc-preproc_qc.tsv"
    kwargs = {**inputs["kwargs"], "qc": [*inputs["kwargs"]["qc"], missing]}
    with pytest.raises(InputError, match="sub-09_task-rest_desc-preproc_qc.tsv: file not found"):
        build_report(tmp_path / "r.html", **kwargs)
    assert not (tmp_path / "r.html").exists()


def test_bad_matrix_and_bad_edges_are_named(inputs, tmp_path):
    bad = tmp_path / "bad_relmat.tsv"
    pd.DataFrame(np.zeros((3, 3)), index=pd.Index(["a", "b", "c"], name="Node"), columns=["a", "b", "c"]).to_csv(bad, sep="\t")
    with pytest.raises(InputError, match="bad_relmat.tsv: 3 regions"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "group_fc": bad})
    edges = tmp_path / "edges.tsv"
    pd.DataFrame({"region_i": [1], "region_j": [999], "delta": [0.1]}).to_csv(edges, sep="\t", index=False)
    with pytest.raises(InputError, match="edges.tsv: region labels"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "ground_truth_edges": edges})
    with pytest.raises(ValueError, match="needs 'group_diff'"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "group_diff": None})


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_is_recorded(inputs, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    build_report(tmp_path / "r.html", **inputs["kwargs"])
    assert f"git commit {commit}" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_matrices_are_put_in_label_order_by_region_name(inputs, tmp_path):
    """A matrix whose rows come in another order is reordered by name: label k is row k-1."""
    kwargs = inputs["kwargs"]
    table = pd.read_csv(kwargs["group_diff"], sep="\t", index_col=0)
    order = np.random.default_rng(3).permutation(N_REGIONS)
    shuffled = tmp_path / "shuffled_relmat.tsv"
    table.iloc[order, order].to_csv(shuffled, sep="\t", na_rep="n/a")
    observed = []
    for name, diff in (("shuffled.html", shuffled), ("ordered.html", kwargs["group_diff"])):
        build_report(tmp_path / name, **{**kwargs, "group_diff": diff})
        page = _Page()
        page.feed((tmp_path / name).read_text(encoding="utf-8"))
        observed.append([(r["Observed difference"], r["Rank by |observed|"]) for r in _rows(page, "ground-truth")])
    assert observed[0] == observed[1]


def test_roc_and_confusion_equal_sklearn(built, inputs):
    """The AUROC and confusion counts shown for every set-up and variant, against scikit-learn
    on the predictions files (scores with ties)."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    rows = {(r["Set-up"], r["Variant"]): r for r in _rows(built["page"], "roc-confusion")}
    preds = pd.concat([pd.read_csv(p, sep="\t", dtype={"setup": str}) for p in inputs["kwargs"]["predictions"]])
    assert len(rows) == 6
    for (setup, variant), frame in preds.groupby(["setup", "variant"]):
        row = rows[(setup, variant)]
        assert float(row["AUROC"]) == pytest.approx(roc_auc_score(frame["label"], frame["score"]), abs=5e-4)
        tn, fp, fn, tp = confusion_matrix(frame["label"], (frame["score"] >= 0.5).astype(int), labels=[0, 1]).ravel()
        assert [int(row[k]) for k in ("TN", "FP", "FN", "TP")] == [tn, fp, fn, tp]


def test_roc_points_match_sklearn_curve():
    from sklearn.metrics import roc_auc_score, roc_curve

    from fmriflow.evaluation import roc_points

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.uniform(0, 1, 200) + 0.2 * labels, 1)  # many ties
    fpr, tpr, auc = roc_points(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert auc == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_points([1, 1], [0.2, 0.9])[2])  # one class: undefined


def test_variant_table_and_top_regions(built, inputs):
    variants = _rows(built["page"], "finetune-variants")
    kinds = {(r["Set-up"], r["Variant"]): r["Kind"] for r in variants}
    assert kinds[("agnostic", "concat")] == "model" and kinds[("agnostic", "logistic")] == "baseline"
    assert kinds[("site-01", "permuted_concat")] == "control"
    assert variants[0]["AUROC pooled [95% CI]"] == "0.550 [0.300, 0.800]"
    regions = pd.read_csv(Path(inputs["kwargs"]["predictions"][0]).with_name("attribution_regions.tsv"), sep="\t")
    top = _rows(built["page"], "top-regions")
    expected = regions.sort_values("total", ascending=False).head(20)
    assert [r["Region"] for r in top] == expected["name"].tolist()


def test_exclusions_and_detail_runs(built):
    rows = _rows(built["page"], "exclusions")
    assert [r["Run"] for r in rows] == ["sub-03_task-rest", "sub-04_task-rest"]
    assert rows[1]["Reasons"].startswith("mean FD 0.314 mm > 0.2 mm")
    captions = {f["id"]: f["caption"] for f in built["summary"]["figures"]}
    assert "excluded: mean FD" in captions["qc-run-sub-04_task-rest"]
    assert "included run with the highest mean FD" in captions["qc-run-sub-02_task-rest"]
    qc = {r["Run"]: r["Median tSNR"] for r in _rows(built["page"], "qc-table")}
    assert qc["sub-02_task-rest"] == "41.0"


def test_tsnr_and_carpet_numbers(built, inputs):
    """The median tSNR and voxel counts in a carpet figure's caption, against numpy on the image."""
    files = inputs["kwargs"]["run_files"]["sub-04/func/sub-04_task-rest"]
    bold = np.asarray(nib.load(files["bold"]).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(files["mask"]).dataobj) > 0
    series = bold[mask]
    median = np.median(series.mean(axis=1) / series.std(axis=1, ddof=1))
    caption = next(f["caption"] for f in built["summary"]["figures"] if f["id"] == "qc-run-sub-04_task-rest")
    assert f"(median {median:.1f})" in caption
    assert f"{mask.sum()} of {mask.sum()} in-mask voxels" in caption  # fewer than the carpet's cap


def test_pretraining_summary(built):
    (row,) = _rows(built["page"], "pretrain-summary")
    assert row["Steps"] == "4" and row["Last train loss"] == "0.7000"
    assert row["First val loss"] == "1.2000" and row["Best val loss"] == "0.9500 at step 2"
    assert "voxel.enabled is false" in built["text"]


def test_disabled_finetuning_is_shown_as_not_run(inputs, tmp_path):
    config = {**inputs["kwargs"]["config"], "finetune": {"enabled": False}}
    kwargs = {**inputs["kwargs"], "finetune_table": None, "predictions": [], "config": config}
    summary = build_report(tmp_path / "r.html", **kwargs)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<b>Not run:</b> fine-tuning and evaluation (finetune.enabled is false)" in text
    assert not any(f["id"].startswith(("finetune", "attribution")) for f in summary["figures"])


def test_disabled_pretraining_is_shown_as_not_run(inputs, tmp_path):
    config = {**inputs["kwargs"]["config"], "pretrain": {"enabled": False}, "finetune": {"enabled": False}}
    kwargs = {**inputs["kwargs"], "pretrain_metrics": None, "finetune_table": None, "predictions": [], "config": config}
    summary = build_report(tmp_path / "r.html", **kwargs)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<b>Not run:</b> pretraining (pretrain.enabled is false)" in text
    assert "<b>Not run:</b> voxel-level models (BrainMT, NeuroSTORM) (voxel.enabled is false)" in text
    assert "pretrain-curves" not in [f["id"] for f in summary["figures"]]


def test_group_difference_switched_off_is_shown_as_not_run(inputs, tmp_path):
    """report.group_column: null: the group step writes an all-NaN difference whose sidecar says so."""
    diff = tmp_path / Path(inputs["kwargs"]["group_diff"]).name
    shutil.copy(inputs["kwargs"]["group_diff"], diff)
    write_json(sidecar_path(diff), {"GroupColumn": None, "Note": "report.group_column is null: no groups compared"})
    kwargs = {**inputs["kwargs"], "group_diff": diff, "ground_truth_edges": None}
    summary = build_report(tmp_path / "r.html", **kwargs)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<b>Not run:</b> group difference (report.group_column is null)" in text
    assert "fc-groupdiff" not in [f["id"] for f in summary["figures"]]


def test_figures_are_written_with_their_sources(inputs, tmp_path):
    summary = build_report(tmp_path / "r.html", figures_dir=tmp_path / "figures", **inputs["kwargs"])
    page = _Page()
    page.feed((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == sorted(f"{f['id']}.png" for f in summary["figures"])
    for figure, src in zip(summary["figures"], page.images):
        png = tmp_path / "figures" / f"{figure['id']}.png"
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
        sidecar = json.loads(png.with_suffix(".json").read_text())["Provenance"]
        assert [i["path"] for i in sidecar["Inputs"]] == figure["sources"]
    assert set(summary["inputs"]) >= {s for f in summary["figures"] for s in f["sources"]}
    rows = _rows(page, "report-inputs")
    assert [r["File"] for r in rows] == summary["inputs"]


def test_caption_file_covers_every_figure_id(built):
    """workflow/report/figure.rst (the captions of ``snakemake --report``) has a caption for every figure."""
    text = (Path(__file__).resolve().parents[1] / "workflow" / "report" / "figure.rst").read_text()
    for figure in built["summary"]["figures"]:
        fig_id = figure["id"]
        key = "qc-run-" if fig_id.startswith("qc-run-") else fig_id
        assert f'"{key}"' in text, fig_id


def test_bad_training_inputs_are_named(inputs, tmp_path):
    empty = tmp_path / "metrics.csv"
    empty.write_text("step,train_loss,val_loss,lr,grad_norm,samples_per_s\n")
    with pytest.raises(InputError, match="metrics.csv: metrics table has no rows"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "pretrain_metrics": empty})
    preds = tmp_path / "setup-agnostic" / "predictions.tsv"
    write_tsv(preds, pd.DataFrame({"setup": ["agnostic"], "variant": ["concat"], "subject": ["01"], "label": [1]}))
    with pytest.raises(InputError, match=r"predictions.tsv: lacks column\(s\) \['score'\]"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "predictions": [preds]})
    with pytest.raises(ValueError, match="unknown kind"):
        build_report(tmp_path / "r.html", **{**inputs["kwargs"], "run_files": {"sub-01_task-rest": {"boldx": "a"}}})
    assert not (tmp_path / "r.html").exists()


def test_group_difference_not_run_names_the_reason():
    """report.group_column: null (or a difference with no defined value) shows 'Not run' with the
    reason, and neither the sidecar's table nor an all-grey figure."""
    from fmriflow.report.connectivity import connectivity_section
    from fmriflow.report.figures import Figures

    n = 6
    regions = pd.DataFrame({"index": np.arange(1, n + 1), "name": [f"R{k}" for k in range(1, n + 1)]})
    fc, nan = np.eye(n), np.full((n, n), np.nan)
    args = (regions, "fc.tsv", "diff.tsv", None)
    # as group_connectivity_step wrote it before (the note said "no column None"), and as it writes it now
    for meta in ({"GroupColumn": None, "Note": "no column None in participants.tsv"},
                 {"GroupColumn": None, "Note": "report.group_column is null"}):
        figures = Figures()
        html = connectivity_section(fc, nan, meta, None, *args, figures)
        assert "<b>Not run:</b> group difference (report.group_column is null)." in html
        assert "no column None" not in html and 'id="group-comparison"' not in html
        assert [f["id"] for f in figures.items] == ["fc-mean"]
    figures = Figures()
    note = "report.group_column 'site' has 1 levels among these runs; a difference needs 2"
    html = connectivity_section(fc, nan, {"GroupColumn": "site", "Note": note}, None, *args, figures)
    assert f"<b>Not run:</b> group difference ({note})." in html.replace("&#x27;", "'")
    assert [f["id"] for f in figures.items] == ["fc-mean"]
    # a computed difference is still drawn, with its comparison table
    figures = Figures()
    diff = np.where(np.eye(n, dtype=bool), np.nan, 0.1)
    html = connectivity_section(fc, diff, {"GroupColumn": "response", "Levels": ["a", "b"]}, None, *args, figures)
    assert "Not run" not in html and 'id="group-comparison"' in html
    assert [f["id"] for f in figures.items] == ["fc-mean", "fc-groupdiff"]


def test_manifest_summary_counts_suffixes_of_bids_named_files_only(tmp_path):
    """Files without a BIDS name (notes.v6, scan.1e2, README) count as 'other', whatever suffix the
    manifest recorded for them; BIDS-named files count under their suffix."""
    from fmriflow.report import inputs as read
    from fmriflow.report.overview import dataset_section

    manifest = tmp_path / "manifest.tsv"
    write_tsv(manifest, pd.DataFrame({
        "path": ["sub-01/func/sub-01_task-rest_bold.nii.gz", "sub-01/func/sub-01_task-rest_bold.json",
                 "task-rest_bold.json", "sub-01/anat/sub-01_T1w.nii.gz", "participants.tsv", "notes.v6",
                 "scan.1e2", "README", "T1w.json"],
        "sha256": [f"{k:064x}" for k in range(9)],
        "suffix": ["bold", "bold", "bold", "T1w", "participants", "6", "e2", None, "T1w"],
    }))
    files = read.read_table(manifest, ["path", "sha256"], dtype=str)  # as build_report reads it
    people = pd.DataFrame({"participant_id": ["sub-01"]})
    page = _Page()
    page.feed(dataset_section(people, "participants.tsv", files, manifest))
    counts = {r["Suffix"]: r["Files"] for r in _rows(page, "manifest-summary")}
    assert counts == {"T1w": "2", "bold": "3", "other": "3", "participants": "1"}  # T1w.json: a top-level sidecar


def test_text_alignment_section_shows_the_last_evaluation_and_the_answers(inputs, tmp_path):
    """The vq-align runs at their last evaluation (and the discriminator's range over the last four)
    and the language model's MAE with its CIs, as the files hold them; the files count as inputs."""
    steps = np.arange(0, 70, 10)
    rng = np.random.default_rng(4)
    vq = pd.DataFrame({"step": steps, "train_loss": rng.random(7), "recon_r2": rng.normal(0, 0.1, 7),
                       "disc_acc": rng.uniform(0.4, 0.6, 7), "perplexity": rng.uniform(10, 60, 7),
                       "code_usage": rng.uniform(0.5, 1, 7)})
    vq.loc[1::2, ["recon_r2", "disc_acc", "perplexity", "code_usage"]] = np.nan  # training-log rows
    vq.to_csv(tmp_path / "metrics.csv", index=False)
    lm = pd.DataFrame({"predictor": ["lm", "ridge_on_codes"], "target": "age", "windows": 10, "unparseable_answers": [2, 0],
                       "subjects_without_answer": 0, "n_subjects": 10, "train_mean": 42.0, "mae": [6.5, 7.25],
                       "mae_ci_low": [4.0, 5.0], "mae_ci_high": [9.0, 9.5], "mae_mean_baseline": 7.5,
                       "mae_mean_baseline_ci_low": 5.0, "mae_mean_baseline_ci_high": 10.0, "mae_difference": [-1.0, -0.25],
                       "mae_difference_ci_low": [-3.0, -1.0], "mae_difference_ci_high": [0.5, 0.75]})
    lm.to_csv(tmp_path / "lm_metrics.tsv", sep="\t", index=False)
    files = {"aligned": tmp_path / "metrics.csv", "lm": tmp_path / "lm_metrics.tsv"}
    summary = build_report(tmp_path / "r.html", **{**inputs["kwargs"], "text": files})
    assert summary["sections"] == [*SECTIONS[:-1], "text", "provenance"]
    assert {str(p) for p in files.values()} <= set(summary["inputs"])
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="text">'):html.index('<section id="provenance">')]
    evaluated = vq.dropna(subset=["recon_r2"])
    last, late = evaluated.iloc[-1], evaluated["disc_acc"].iloc[-4:]
    assert (f"<td>aligned</td><td>60</td><td>{last['recon_r2']:.3f}</td><td>{last['disc_acc']:.3f}</td>"
            f"<td>{late.min():.2f}-{late.max():.2f}</td>") in section
    assert "<td>lm</td><td>6.50 [4.00, 9.00]</td><td>7.50</td><td>-1.00 [-3.00, +0.50]</td><td>10</td><td>2 of 10</td>" in section
    assert "age" in section
