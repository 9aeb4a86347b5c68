"""The bad-input matrix through the real DAG: each case fails with a message naming the file and the
problem, writes nothing for its subject, and with ``--keep-going`` the good subjects finish.

One DAG run holds eight broken subjects beside a good one and one whose run is shorter than
the model window; short follow-up runs (a job or two each, on the finished subjects) cover
the dataset-wide inputs: participants.tsv, the window, an extra atlas and the config.
docs/reliability.md lists the same cases with the messages users see.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_workflow import demo_config, make_demo, run_snakemake

pytestmark = pytest.mark.integration

N_TRS, SHORT = 30, 15  # volumes per run, and of the short run; the window is 20
RUN_FILES = ("qc", "preproc_bold", "brain_mask", "denoised", "timeseries", "coverage", "relmat")


def _paths(demo: Path, s: str) -> dict[str, Path]:
    func = demo / "bids" / f"sub-{s}" / "func"
    deriv = demo / "derivatives" / "fmriprep" / f"sub-{s}" / "func"
    return {
        "raw": func / f"sub-{s}_task-rest_bold.nii.gz",
        "raw_json": func / f"sub-{s}_task-rest_bold.json",
        "preproc": deriv / f"sub-{s}_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz",
        "confounds": deriv / f"sub-{s}_task-rest_desc-confounds_timeseries.tsv",
    }


def _resave(path: Path, data: np.ndarray, like: nib.Nifti1Image) -> None:
    nib.save(nib.Nifti1Image(data, like.affine, like.header), path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def _three_d(path: Path) -> None:
    img = nib.load(path)
    _resave(path, np.asarray(img.dataobj)[..., 0], img)


def _drop_tr(path: Path) -> None:
    meta = json.loads(path.read_text())
    del meta["RepetitionTime"]
    path.write_text(json.dumps(meta))


def _header_tr(path: Path) -> None:
    img = nib.load(path)
    img.header["pixdim"][4] = 3.0  # the sidecar says 2.0
    _resave(path, np.asarray(img.dataobj), img)


def _non_finite(path: Path) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[10, 12, 10, 3], data[11, 12, 10, 7] = np.nan, np.inf
    _resave(path, data, img)


def _fill(value: float):
    def corrupt(path: Path) -> None:
        img = nib.load(path)
        _resave(path, np.full(img.shape, value, np.float32), img)
    return corrupt


# subject -> (file to break, how, the message: file name and problem)
BAD = {
    "02": ("raw", _truncate, "cannot decompress volumes"),
    "03": ("raw", _three_d, "BOLD must be 4D, got shape (46, 55, 46)"),
    "04": ("raw_json", _drop_tr, "no RepetitionTime in the BOLD sidecar"),
    "05": ("raw", _header_tr, "header TR 3 s disagrees with sidecar RepetitionTime 2 s"),
    "06": ("preproc", _non_finite, "2 NaN or infinite value(s), the first in volume 3 at voxel (10, 12, 10)"),
    "07": ("preproc", _fill(0.0), f"every voxel is 0 in all {N_TRS} volumes: an empty run"),
    "08": ("preproc", _truncate, "cannot decompress volumes"),
    "10": ("preproc", _fill(100.0), f"no voxel changes over the {N_TRS} volumes"),
}
GOOD, SHORT_SUBJECT = "01", "09"


def _shorten(demo: Path, s: str, n: int) -> None:
    files = _paths(demo, s)
    for key in ("raw", "preproc"):
        img = nib.load(files[key])
        _resave(files[key], np.asarray(img.dataobj)[..., :n], img)
    table = pd.read_csv(files["confounds"], sep="\t", keep_default_na=False)
    table.iloc[:n].to_csv(files["confounds"], sep="\t", index=False)


def _run_files(results: Path, s: str) -> list[Path]:
    return sorted((results / "fmriflow" / f"sub-{s}" / "func").glob("*"))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, atlas_dir):
    base = tmp_path_factory.mktemp("bad")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=10, n_trs=N_TRS, bold_res=4, seed=21)
    for s, (key, corrupt, _) in BAD.items():
        corrupt(_paths(demo, s)[key])
    _shorten(demo, SHORT_SUBJECT, SHORT)
    results = base / "results"
    # the validator still runs (its findings are checked below) but does not stop the run,
    # so the per-run checks are what each subject meets
    # run QC off: the short run must reach the dataset step, whose own check this matrix tests
    config = demo_config(demo, results, bids={"fail_on_errors": False},
                         qc={"max_mean_fd": None, "max_fraction_censored": None, "min_degrees_of_freedom": None,
                             "min_region_coverage": None})
    config["dataset"]["fractions"] = [1.0, 0.0, 0.0]  # every subject trains: the short run is in the training split
    proc = run_snakemake(base, config, "--keep-going")
    return demo, results, base, config, proc


def test_each_bad_subject_fails_naming_file_and_problem(matrix):
    demo, results, _, _, proc = matrix
    assert proc.returncode != 0
    for s, (key, _, problem) in BAD.items():
        assert f"{_paths(demo, s)[key if key != 'raw_json' else 'raw']}: {problem}" in proc.stderr, s
        assert not (results / "fmriflow" / f"sub-{s}").exists(), f"sub-{s} left artefacts"


def test_good_subjects_complete_despite_failures(matrix):
    _, results, _, _, _ = matrix
    for s in (GOOD, SHORT_SUBJECT):
        files = _run_files(results, s)
        artefacts = [f for f in files if f.suffix != ".json"]
        # qc, BOLD and mask on the grid, denoised BOLD and its QC row, time series, coverage, FC as TSV and NPY
        assert len(artefacts) == 9, [f.name for f in files]
        for path in artefacts:  # each with its own checksum in its sidecar
            record = json.loads(path.with_name(path.name.split(".")[0] + ".json").read_text())["Provenance"]
            described = {o["path"]: o["sha256"] for o in [record["Output"], *record.get("Outputs", [])]}
            assert described[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
    short = pd.read_csv(next((results / "fmriflow" / f"sub-{SHORT_SUBJECT}" / "func").glob("*_timeseries.tsv")), sep="\t")
    assert len(short) == SHORT
    # dataset-wide steps wait for every subject: none of them ran
    assert not (results / "dataset").exists() and not (results / "fmriflow" / "group").exists()


def test_no_temporary_or_partial_files(matrix):
    _, results, _, _, _ = matrix
    hidden = [p for p in results.rglob(".*")]
    assert hidden == []


def test_validator_reports_the_raw_problems_it_knows(matrix):
    """With bids.fail_on_errors (the default) these stop the run at the bids step, naming file and rule."""
    from fmriflow.errors import InputError
    from fmriflow.steps import bids_step

    demo, results, base, _, _ = matrix
    validation = json.loads((results / "bids" / "validation.json").read_text())
    errors = "\n".join(validation["errors"])
    assert "BOLD_NOT_4D: /sub-03/func/sub-03_task-rest_bold.nii.gz" in errors
    assert "SIDECAR_KEY_REQUIRED (RepetitionTime): /sub-04/func/sub-04_task-rest_bold.nii.gz" in errors
    assert "REPETITION_TIME_MISMATCH: /sub-05/func/sub-05_task-rest_bold.nii.gz" in errors
    with pytest.raises(InputError) as failure:
        bids_step(str(demo / "bids"), str(base / "m.tsv"), str(base / "v.json"), fail_on_errors=True)
    message = str(failure.value)
    assert re.match(rf"{re.escape(str(demo / 'bids'))}: the BIDS validator reports \d+ error\(s\):\n", message)
    assert "\n  SIDECAR_KEY_REQUIRED (RepetitionTime): /sub-04/func/sub-04_task-rest_bold.nii.gz\n" in message
    assert message.endswith("(set bids.fail_on_errors: false to go on regardless)")
    assert not (base / "m.tsv").exists() and not (base / "v.json").exists()


def _follow_up(matrix, *targets: str, subjects=(GOOD, SHORT_SUBJECT), **changes):
    """Snakemake on the finished subjects only, building ``targets``; finished jobs are not rerun."""
    _, results, base, config, _ = matrix
    config = {**config, "subjects": list(subjects), **changes}
    # restricting the subjects changes the bids rule's input list; only file times decide here
    return run_snakemake(base, config, *targets, "--keep-going", "--rerun-triggers", "mtime")


def _group_mean(results: Path) -> str:
    return str(results / "fmriflow/group/space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_desc-mean_relmat.tsv")


def _card(results: Path) -> Path:
    return results / "dataset" / "atlas-A424" / "dataset_card.json"


def test_participants_problems_stop_group_steps(matrix):
    demo, results, _, _, _ = matrix
    participants = demo / "bids" / "participants.tsv"
    good = participants.read_bytes()
    try:
        lines = good.decode().splitlines()
        participants.write_text("\n".join([*lines, lines[1]]) + "\n")  # sub-01 again
        proc = _follow_up(matrix, _group_mean(results), str(_card(results)))
        assert proc.returncode != 0
        assert proc.stderr.count(f"{participants}: sub-01 is listed 2 times (lines [2, 12]); each participant must appear once") >= 2
        participants.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary, not a table")
        proc = _follow_up(matrix, _group_mean(results))
        assert proc.returncode != 0
        assert f"{participants}: not a readable tab-separated table (UnicodeDecodeError" in proc.stderr
    finally:
        participants.write_bytes(good)
    assert not Path(_group_mean(results)).exists() and not _card(results).exists()


def test_run_shorter_than_window_is_left_out_unless_no_run_is_long_enough(matrix):
    _, results, _, _, _ = matrix
    proc = _follow_up(matrix, str(_card(results)), subjects=[SHORT_SUBJECT])
    assert proc.returncode != 0
    short_ts = next((results / "fmriflow" / f"sub-{SHORT_SUBJECT}" / "func").glob("*atlas-A424_stat-mean_timeseries.tsv"))
    assert (f"{short_ts}: no training run yields a window, so the scaling cannot be fitted "
            f"(sub-09/func/sub-09_task-rest: {SHORT} time points, fewer than one window of 20)") in proc.stderr
    assert not (results / "dataset").exists() or not any((results / "dataset").rglob("*.npy"))

    proc = _follow_up(matrix, str(_card(results)), _group_mean(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(_card(results).read_text())
    assert [(r["run"], r["reason"]) for r in card["skipped_runs"]] == [
        ("sub-09/func/sub-09_task-rest", f"{SHORT} time points, fewer than one window of 20")]
    assert {r["run"] for r in card["runs"]} == {"sub-01/func/sub-01_task-rest"}
    log = (results / "logs" / "dataset" / "atlas-A424.log").read_text()
    assert "sub-09/func/sub-09_task-rest is left out of the dataset: 15 time points" in log


def test_extra_atlas_off_the_template_grid(matrix, a424_img):
    _, results, base, _, _ = matrix
    labels = np.zeros((20, 20, 20), np.int16)
    labels[5:15, 5:15, 5:15] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [400.0, 400.0, 400.0]  # a native-space origin, far from MNI
    image = base / "far.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), image)
    pd.DataFrame({"index": [1], "name": ["Blob"]}).to_csv(base / "far.tsv", sep="\t", index=False)
    out = results / "fmriflow/atlases/atlas-Far/atlas-Far_space-MNI152NLin6Asym_res-2_dseg.nii.gz"
    proc = _follow_up(matrix, str(out), atlas={"extra": {"Far": {"image": str(image), "labels": str(base / "far.tsv")}}})
    assert proc.returncode != 0
    assert (f"{image}: none of its 1 labels falls on the MNI152NLin6Asym 2 mm grid after resampling: "
            "the atlas does not overlap the template (is it in MNI space?)") in proc.stderr
    assert not out.exists() and not any(out.parent.glob("*"))


def test_config_rejected_by_schema_lists_every_key(matrix):
    _, _, base, config, _ = matrix
    bad = {**config, "dataset": {**config["dataset"], "window": 5, "strid": 3}, "denoise": {"strategy": "aggressive"}}
    proc = run_snakemake(base, bad, "--dry-run")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{base / 'config.yaml'}, config/config.yaml: 3 config value(s) rejected by config.schema.yaml:" in out
    assert "dataset.window: 5 is less than the minimum of 20" in out
    assert "dataset: Additional properties are not allowed ('strid' was unexpected) (allowed: fractions, seed," in out
    assert "denoise.strategy: 'aggressive' is not one of ['24P', '27P', '36P', 'acompcor', 'acompcor_gsr', 'gsr_only', 'none']" in out
