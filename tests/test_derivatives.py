"""preproc.mode derivatives: fMRIPrep layouts from 20.2 on, with sessions, several runs and tasks.

fMRIPrep >= 21 names the 2 mm template grid ``res-2``; 20.2 writes no ``res`` entity. Each
run must find its own files, and a missing one is named with what the folder holds instead.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmriflow.errors import InputError
from fmriflow.ingest import discover_runs
from fmriflow.preproc import check_run, locate_run, preproc_files

# (session, task, run) of each raw BOLD: two sessions, two tasks, repeated runs
RUNS = [("1", "rest", "1"), ("1", "rest", "2"), ("1", "nback", None), ("2", "rest", "1")]


def _raw_bids(root):
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    keys = []
    for ses, task, run in RUNS:
        name = f"sub-01_ses-{ses}_task-{task}" + (f"_run-{run}" if run else "")
        func = root / "sub-01" / f"ses-{ses}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 5), np.int16), np.eye(4)), func / f"{name}_bold.nii.gz")
        keys.append(f"sub-01/ses-{ses}/func/{name}")
    return keys


def _fmriprep_run(root, key, n_t, res="2", space="MNI152NLin6Asym", confounds_suffix="timeseries", with_mask=True):
    """One run's fMRIPrep outputs; ``n_t`` differs per run so a mix-up shows."""
    func = (root / key).parent
    func.mkdir(parents=True, exist_ok=True)
    stem = key.split("/")[-1]
    entities = f"space-{space}" + (f"_res-{res}" if res else "")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(np.ones((3, 3, 3, n_t), np.float32), affine)
    img.header.set_zooms((2.0, 2.0, 2.0, 2.0))
    nib.save(img, func / f"{stem}_{entities}_desc-preproc_bold.nii.gz")
    if with_mask:
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), affine), func / f"{stem}_{entities}_desc-brain_mask.nii.gz")
    fd = np.r_[np.nan, np.full(n_t - 1, 0.1)]
    pd.DataFrame({"framewise_displacement": fd, "std_dvars": fd}).to_csv(
        func / f"{stem}_desc-confounds_{confounds_suffix}.tsv", sep="\t", index=False, na_rep="n/a")


@pytest.mark.parametrize("res", ["2", None], ids=["fmriprep>=21 res-2", "fmriprep-20.2 no res"])
def test_sessions_runs_and_tasks_find_their_own_files(tmp_path, res):
    keys = _raw_bids(tmp_path / "bids")
    assert sorted(discover_runs(tmp_path / "bids")) == sorted(keys)
    deriv = tmp_path / "fmriprep"
    for n, key in enumerate(keys):
        _fmriprep_run(deriv, key, n_t=10 + n, res=res)
    files = preproc_files({"mode": "derivatives", "derivatives_dir": str(deriv), "space": "MNI152NLin6Asym"}, keys, "out")
    for n, key in enumerate(keys):
        stem = key.split("/")[-1]
        found = files[key]
        entities = "space-MNI152NLin6Asym" + ("_res-2" if res else "")
        assert found.bold == deriv / key.rsplit("/", 1)[0] / f"{stem}_{entities}_desc-preproc_bold.nii.gz"
        assert found.mask.name == f"{stem}_{entities}_desc-brain_mask.nii.gz"
        assert found.confounds.name == f"{stem}_desc-confounds_timeseries.tsv"
        qc = check_run(found, raw_tr=2.0)
        assert qc["n_volumes"] == 10 + n  # the run's own BOLD, not a sibling's
        assert qc["mean_fd"] == pytest.approx(0.1)


def test_res2_preferred_then_none_then_others(tmp_path):
    key = "sub-01/func/sub-01_task-rest"
    _fmriprep_run(tmp_path / "a", key, 10, res="1")
    assert locate_run(tmp_path / "a", key).bold.name == "sub-01_task-rest_space-MNI152NLin6Asym_res-1_desc-preproc_bold.nii.gz"
    _fmriprep_run(tmp_path / "a", key, 10, res=None)
    assert "_res-" not in locate_run(tmp_path / "a", key).bold.name
    _fmriprep_run(tmp_path / "a", key, 10, res="2")
    assert "_res-2_" in locate_run(tmp_path / "a", key).bold.name
    # another MNI template, when configured
    _fmriprep_run(tmp_path / "b", key, 10, space="MNI152NLin2009cAsym")
    assert locate_run(tmp_path / "b", key, space="MNI152NLin2009cAsym").bold.name.startswith(
        "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2")


def test_missing_files_are_named(tmp_path):
    key = "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1"
    _fmriprep_run(tmp_path, key, 10, with_mask=False)
    with pytest.raises(InputError) as err:
        locate_run(tmp_path, key)
    message = str(err.value)
    assert "sub-01_ses-2_task-rest_run-1_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz: preprocessed mask not found" in message
    assert "sub-01_ses-2_task-rest_run-1_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz" in message  # what is there
    # a run with no folder at all
    with pytest.raises(InputError, match="does not exist"):
        locate_run(tmp_path, "sub-02/func/sub-02_task-rest")
    # fMRIPrep before 20.2 named the confounds desc-confounds_regressors
    old = "sub-03/func/sub-03_task-rest"
    _fmriprep_run(tmp_path, old, 10, confounds_suffix="regressors")
    with pytest.raises(InputError, match="desc-confounds_regressors.tsv exists: fMRIPrep before 20.2 is not supported"):
        locate_run(tmp_path, old)


def test_non_mni_space_and_mismatched_files(tmp_path):
    key = "sub-01/func/sub-01_task-rest"
    _fmriprep_run(tmp_path, key, 10, space="T1w", res=None)
    with pytest.raises(InputError, match="space 'T1w' is not an MNI template space"):
        locate_run(tmp_path, key, space="T1w")
    _fmriprep_run(tmp_path / "c", key, 10)
    confounds = tmp_path / "c" / "sub-01" / "func" / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    pd.DataFrame({"framewise_displacement": [0.1] * 7}).to_csv(confounds, sep="\t", index=False)
    with pytest.raises(InputError, match="7 rows for 10 volumes"):
        check_run(locate_run(tmp_path / "c", key), raw_tr=2.0)
    with pytest.raises(InputError, match="TR 2 s differs from the raw BOLD's RepetitionTime 0.8 s"):
        check_run(locate_run(tmp_path / "c", key), raw_tr=0.8)
