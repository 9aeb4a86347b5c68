"""A growing dataset through real Snakemake plans: each run depends on its own raw files.

Touching or changing one subject's raw files replans that subject and the dataset-wide steps
only; adding a subject plans that subject and the dataset-wide steps only; a changed
RepetitionTime reruns the run it applies to and makes the audit of an artefact made before fail,
naming the sidecar. The pieces behind it (BIDS names, sidecar inheritance, the raw listing's
fingerprint, the run-key pattern) are checked against pybids, the reference BIDS reader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from fmriflow.ingest import RUN_KEY_PATTERN, Sidecars, listing_fingerprint, merged_metadata, parse_name
from fmriflow.naming import derivative, run_key

# ---------------------------------------------------------------------------- pieces, against pybids

NAMES = ["sub-01_task-rest_bold.nii.gz", "sub-01_ses-pre_task-rest_acq-mb4_run-02_bold.nii",
         "sub-A1_task-nback_dir-PA_echo-1_bold.nii.gz", "sub-01_ses-1_task-rest_bold.json", "task-rest_bold.json"]


@pytest.mark.parametrize("name", NAMES)
def test_parse_name_agrees_with_pybids(name):
    from bids.layout import parse_file_entities

    ours = parse_name(name)
    theirs = {k: str(v) for k, v in parse_file_entities("/" + name).items() if k != "datatype"}  # pybids: a path
    assert ours == theirs


def _dataset(root: Path) -> Path:
    """Sidecars at three levels: dataset (task-rest), subject (one task), and run (one run)."""
    files = {
        "dataset_description.json": {"Name": "x", "BIDSVersion": "1.10.0"},
        "task-rest_bold.json": {"RepetitionTime": 2.0, "TaskName": "rest", "SliceTiming": [0, 1]},
        "task-nback_bold.json": {"RepetitionTime": 1.5, "TaskName": "nback"},
        "sub-01/sub-01_task-rest_bold.json": {"SliceTiming": [0, 0.5]},
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.json": {"RepetitionTime": 2.5},
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_events.json": {"RepetitionTime": 9.0},  # another suffix
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.json": {"RepetitionTime": 3.0},  # another run
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    for rel in ("sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.nii.gz", "sub-02/func/sub-02_task-nback_bold.nii.gz",
                "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def test_inherited_sidecars_and_metadata_agree_with_pybids(tmp_path):
    from bids import BIDSLayout

    root = _dataset(tmp_path / "bids")
    layout = BIDSLayout(root, validate=False)
    index = Sidecars(root)
    for bold in sorted(root.rglob("*_bold.nii.gz")):
        sidecars = index.of(bold)
        assert all(s.is_file() for s in sidecars)
        assert merged_metadata(bold, sidecars) == layout.get_metadata(str(bold)), bold.name
    run2 = root / "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.nii.gz"
    assert [s.relative_to(root).as_posix() for s in index.of(run2)] == [
        "task-rest_bold.json", "sub-01/sub-01_task-rest_bold.json", "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.json"]


def test_two_sidecars_at_one_level_are_refused_naming_both(tmp_path):
    from fmriflow.errors import InputError

    root = _dataset(tmp_path / "bids")
    (root / "sub-02" / "sub-02_bold.json").write_text("{}")
    (root / "sub-02" / "sub-02_task-nback_bold.json").write_text("{}")
    bold = root / "sub-02/func/sub-02_task-nback_bold.nii.gz"
    with pytest.raises(InputError, match="sub-02_bold.json and sub-02_task-nback_bold.json"):
        merged_metadata(bold, Sidecars(root).of(bold))


def test_listing_fingerprint_follows_every_raw_change(tmp_path):
    root = _dataset(tmp_path / "bids")
    prints = [listing_fingerprint(root)]
    sidecar = root / "sub-01/sub-01_task-rest_bold.json"
    for change in (lambda: os.utime(sidecar, ns=(1, 1)),  # touched
                   lambda: sidecar.write_text(json.dumps({"SliceTiming": [0, 0.6]})),  # rewritten
                   lambda: (root / "README").write_text("hello"),  # added
                   lambda: (root / "README").unlink()):  # removed again
        change()
        prints.append(listing_fingerprint(root))
    assert len(set(prints[:4])) == 4, "a touch, a rewrite and a new file each change it"
    assert prints[4] == prints[2], "removing the new file gives back the listing before it"
    unchanged = listing_fingerprint(root)
    (root / "derivatives" / "x").mkdir(parents=True)  # not raw data
    (root / "derivatives" / "x" / "a.tsv").write_text("1")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    assert listing_fingerprint(root) == unchanged


def test_manifest_provenance_lists_every_raw_file_with_its_checksum(tmp_path):
    import hashlib

    from fmriflow.steps import bids_step

    root = _dataset(tmp_path / "bids")
    (root / "README").write_text("raw, not BIDS-named")
    (root / "derivatives" / "x").mkdir(parents=True)  # not raw data: neither listed nor recorded
    (root / "derivatives" / "x" / "a.tsv").write_text("1")
    bids_step(str(root), str(tmp_path / "manifest.tsv"), str(tmp_path / "validation.json"), validate=False)
    recorded = {i["path"]: i["sha256"] for i in json.loads((tmp_path / "manifest.json").read_text())["Provenance"]["Inputs"]}
    expected = {p.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file() and "derivatives" not in p.parts}
    assert recorded == expected


def test_run_key_pattern_takes_run_keys_and_no_derivative_entities():
    pattern = re.compile(RUN_KEY_PATTERN)
    keys = [run_key(parse_name(n)) for n in NAMES[:3]]
    assert all(pattern.fullmatch(k) for k in keys), keys
    for key in keys:  # a derivative's name leaves exactly the run key to the wildcard
        name = derivative(key, space="MNI152NLin6Asym", res="2", desc="preproc", suffix="bold", extension=".nii.gz")
        found = re.fullmatch(rf"({RUN_KEY_PATTERN})_space-MNI152NLin6Asym_res-2_desc-preproc_bold\.nii\.gz", name)
        assert found and found[1] == key
        assert not pattern.fullmatch(f"{key}_space-MNI152NLin6Asym")


# ---------------------------------------------------------------------------- through the real DAG

pytestmark_dag = pytest.mark.integration


@pytest.fixture(scope="module")
def grown(tmp_path_factory, atlas_dir):
    """A 4-subject demo (the generator balances groups) whose first three subjects ran up to connectivity; sub-04 kept aside."""
    from test_caching import fc_targets, small_config, snakemake
    from test_workflow import make_demo

    base = tmp_path_factory.mktemp("incremental")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=40, bold_res=4, seed=9)
    aside = base / "aside"
    for tree in ("bids", "derivatives/fmriprep"):
        (aside / tree).mkdir(parents=True)
        shutil.move(demo / tree / "sub-04", aside / tree / "sub-04")
    config = small_config(demo, base / "results")
    proc = snakemake(base, config, *fc_targets(config))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return base, demo, aside, config


def _plan(grown) -> dict[str, int]:
    from test_caching import fc_targets, planned_jobs

    base, _, _, config = grown
    # Snakemake skips an input newer than the outputs when its content is unchanged, for files up
    # to --max-checksum-file-size (1 MB); the demo's images are smaller than real BOLD, which
    # always rerun when touched: plan them as real ones
    return planned_jobs(base, config, "--max-checksum-file-size", "0", *fc_targets(config))


# the dataset-wide steps up to connectivity (fc_targets): the manifest, run QC, the lists of every run's
# matrices (group FC and the stack read it) and time series (fmriflow.runfiles), group FC and stack
DATASET_WIDE = {"bids": 1, "run_qc": 1, "run_files": 2, "group_connectivity": 1, "connectivity_stack": 1}
ONE_RUN = {"preproc_derivatives": 1, "resample": 1, "denoise": 1, "parcellate": 1, "connectivity": 1}


def _finish(grown) -> None:
    """Run the plan to the end: the next test starts from a finished state again."""
    from test_caching import fc_targets, snakemake

    base, _, _, config = grown
    proc = snakemake(base, config, *fc_targets(config))
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert _plan(grown) == {}


# The tests below share one dataset and run in file order; each but the last finishes its plan.

@pytestmark_dag
def test_touching_one_subject_replans_that_subject_and_dataset_wide_steps(grown):
    _, demo, _, _ = grown
    assert _plan(grown) == {}
    os.utime(demo / "bids/sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert _plan(grown) == {**ONE_RUN, **DATASET_WIDE}
    _finish(grown)


@pytestmark_dag
def test_adding_a_subject_plans_that_subject_and_dataset_wide_steps(grown):
    _, demo, aside, _ = grown
    for tree in ("bids", "derivatives/fmriprep"):
        shutil.move(aside / tree / "sub-04", demo / tree / "sub-04")
    assert _plan(grown) == {**ONE_RUN, **DATASET_WIDE}
    _finish(grown)


@pytestmark_dag
def test_a_file_no_run_reads_replans_the_manifest_only(grown):
    _, demo, _, _ = grown
    readme = demo / "bids" / "README"
    readme.write_text((readme.read_text() if readme.exists() else "") + "\nA note added later.\n")
    assert _plan(grown) == {"bids": 1}  # run QC and the group steps stay: the runs did not change
    _finish(grown)


@pytestmark_dag
def test_changed_repetition_time_replans_its_run_and_fails_the_audit(grown):
    from fmriflow.audit import audit

    _, demo, _, config = grown
    func = Path(config["output_dir"]) / "fmriflow/sub-02/func"
    qc, relmat = next(func.glob("*_desc-preproc_qc.tsv")), next(func.glob("*_stat-pearsoncorrelation_relmat.tsv"))
    assert audit(relmat).ok
    sidecar = demo / "bids/sub-02/func/sub-02_task-rest_bold.json"
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTime"] = 2.5
    sidecar.write_text(json.dumps(meta, indent=2))
    assert _plan(grown) == {**ONE_RUN, **DATASET_WIDE}
    result = audit(relmat)
    assert not result.ok
    # the problem names the changed sidecar and the record of the run's first step that read it
    assert any(p.startswith(f"{sidecar}: sha256") and str(qc.with_suffix(".json")) in p for p in result.problems), \
        result.problems


# ---------------------------------------------------------------------------- console output

def test_console_shortens_job_lines_for_the_terminal_only():
    import logging

    from fmriflow.console import ConsoleFilter, ShortFormatter, shorten_files

    files = [f"sub-{i:04d}_qc.tsv" for i in range(5000)]
    record = logging.makeLogRecord({"msg": None, "event": "job_info", "input": files, "reason": "x" * 600_000})
    seen = {}
    formatter = ShortFormatter(type("Inner", (logging.Formatter,), {
        "format": lambda self, r: seen.update(input=r.input, reason=r.reason) or ""})())
    formatter.format(record)
    assert seen["input"] == [*files[:5], "... (4994 more) ...", files[-1]]  # 5 + 4994 + 1 = 5000
    assert len(seen["reason"]) < 1200 and seen["reason"].startswith("x" * 1000)
    assert record.input is files and len(record.reason) == 600_000  # other handlers see the whole record
    assert shorten_files(files[:6]) == files[:6]
    drop = ConsoleFilter()
    assert not drop.filter(logging.makeLogRecord({"event": "shellcmd", "shellcmd": None}))
    assert drop.filter(logging.makeLogRecord({"event": "shellcmd", "shellcmd": "echo hi"}))
