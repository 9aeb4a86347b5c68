"""Denoising strategies against hand-built designs and step-by-step least-squares references.

The confounds TSV is written here with fMRIPrep's column names; each strategy's design is
spelled out column by column (XCP-D's definitions), and the cleaned voxels are compared
with residuals computed here with numpy/scipy, not with the module's own helpers.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import CubicSpline
from scipy.signal import butter, sosfiltfilt

from fmriflow.denoise import STRATEGIES, DenoiseSettings, denoise_run
from fmriflow.errors import InputError

N_T, TR, SHAPE, N_DUMMY = 70, 2.0, (4, 3, 3), 2
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
SUFFIXES = ["", "_derivative1", "_power2", "_derivative1_power2"]
CSF_COMPONENTS = [f"a_comp_cor_{k:02d}" for k in range(0, 5)]
WM_COMPONENTS = [f"a_comp_cor_{k:02d}" for k in range(6, 11)]  # a_comp_cor_05 is CSF but not retained

# XCP-D's strategies, written out by hand.
EXPECTED = {
    "24P": [m + s for m in MOTION for s in SUFFIXES],
    "27P": [m + s for m in MOTION for s in SUFFIXES] + ["white_matter", "csf", "global_signal"],
    "36P": [m + s for m in MOTION + ["white_matter", "csf", "global_signal"] for s in SUFFIXES],
    "acompcor": [m + s for m in MOTION for s in ("", "_derivative1")] + WM_COMPONENTS + CSF_COMPONENTS
    + ["cosine00", "cosine01", "cosine02"],
    "acompcor_gsr": [m + s for m in MOTION for s in ("", "_derivative1")] + ["global_signal", "csf", "white_matter"]
    + WM_COMPONENTS + CSF_COMPONENTS + ["cosine00", "cosine01", "cosine02"],
    "gsr_only": ["global_signal"],
    "none": [],
}


def _section(**overrides):
    section = {"strategy": "36P", "fd_threshold": None, "scrub": "censor", "dummy_scans": "auto", "detrend": True,
               "high_pass": None, "low_pass": None, "filter_order": 2, "standardize": False}
    section.update(overrides)
    return DenoiseSettings(**section)


def _write_run(root, seed=0, spikes=(2, 20, 21, 45, N_T - 1)):
    """A run whose voxels mix signal and every confound column; FD spikes at ``spikes``."""
    rng = np.random.default_rng(seed)
    t = np.arange(N_T)
    columns = {}
    for name in MOTION + ["white_matter", "csf", "global_signal"]:
        base = np.cumsum(rng.standard_normal(N_T)) * 0.1
        deriv = np.r_[np.nan, np.diff(base)]
        columns.update({name: base, f"{name}_derivative1": deriv, f"{name}_power2": base**2,
                        f"{name}_derivative1_power2": deriv**2})
    fd = np.abs(rng.standard_normal(N_T)) * 0.1
    fd[list(spikes)] = 0.9
    fd[0] = np.nan
    columns["framewise_displacement"] = fd
    columns["dvars"] = np.r_[np.nan, 20 + rng.standard_normal(N_T - 1)]
    columns["std_dvars"] = np.r_[np.nan, 1 + 0.1 * rng.standard_normal(N_T - 1)]
    for k in range(15):
        columns[f"a_comp_cor_{k:02d}"] = rng.standard_normal(N_T)
    for k in range(3):
        columns[f"cosine{k:02d}"] = np.sqrt(2 / N_T) * np.cos(np.pi * (k + 1) * (t + 0.5) / N_T)
    for k in range(N_DUMMY):
        columns[f"non_steady_state_outlier_{k:02d}"] = (t == k).astype(int)
    confounds = pd.DataFrame(columns)
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    tsv = func / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    confounds.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    meta = {f"a_comp_cor_{k:02d}": {"Method": "aCompCor", "Mask": "CSF", "Retained": k != 5} for k in range(6)}
    meta.update({f"a_comp_cor_{k:02d}": {"Method": "aCompCor", "Mask": "WM", "Retained": True} for k in range(6, 11)})
    meta.update({f"a_comp_cor_{k:02d}": {"Method": "aCompCor", "Mask": "combined", "Retained": True} for k in range(11, 15)})
    tsv.with_suffix(".json").write_text(json.dumps(meta))

    n_vox = int(np.prod(SHAPE))
    signal = rng.standard_normal((N_T, n_vox))
    mix = rng.standard_normal((confounds.shape[1], n_vox))
    data = 800 + 0.05 * t[:, None] + signal + np.nan_to_num(confounds.to_numpy()) @ mix
    data[:N_DUMMY] += 300  # bright non-steady-state volumes
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(data.T.reshape(*SHAPE, N_T).astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    bold = func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
    nib.save(img, bold)
    mask = func / "sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), affine), mask)
    return bold, mask, tsv, confounds, np.asarray(img.dataobj, dtype=np.float64).reshape(-1, N_T).T


def _voxels(path):
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float64).reshape(-1, img.shape[3]).T


@pytest.fixture()
def run(tmp_path):
    return _write_run(tmp_path / "fmriprep")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_design_and_least_squares(run, tmp_path, strategy):
    """Regressors as XCP-D defines them; cleaned voxels = OLS residuals on [1, t, regressors]."""
    bold, mask, tsv, confounds, data = run
    out = tmp_path / "denoised.nii.gz"
    info = denoise_run(bold, mask, tsv, out, _section(strategy=strategy))
    assert info["ConfoundRegressors"] == EXPECTED[strategy]
    assert info["DummyVolumes"] == N_DUMMY and info["NumberOfVolumesOut"] == N_T - N_DUMMY
    y = data[N_DUMMY:]
    x = confounds[EXPECTED[strategy]].to_numpy()[N_DUMMY:]
    t = np.arange(len(y))
    design = np.column_stack([np.ones_like(t), t, x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(_voxels(out), y - design @ beta, atol=2e-3)  # float32 output of values ~1e3
    assert info["qc"]["remaining_time_s"] == (N_T - N_DUMMY) * TR and info["qc"]["n_censored"] == 0
    assert info["DegreesOfFreedom"] == N_T - N_DUMMY - 2 - len(EXPECTED[strategy])  # mean, trend, regressors


def _reference(y, x, kept, high_pass=None, low_pass=None):
    """The documented cleaning, step by step: spline over censored volumes, detrend, filter, fit on kept."""
    t = np.arange(len(y))

    def prepare(a):
        a = a.copy()
        good = np.flatnonzero(kept)
        for j in range(a.shape[1]):
            spline = CubicSpline(good, a[good, j])
            inner = (~kept) & (t > good[0]) & (t < good[-1])
            a[inner, j] = spline(t[inner])
        a[t < good[0]] = a[good[0]]
        a[t > good[-1]] = a[good[-1]]
        for j in range(a.shape[1]):
            a[:, j] -= np.polyval(np.polyfit(t, a[:, j], 1), t)
        if high_pass or low_pass:
            sos = butter(2, [high_pass / 0.25, low_pass / 0.25], btype="bandpass", output="sos")
            a = sosfiltfilt(sos, a, axis=0, padtype="constant", padlen=len(a) - 1)
        return a

    yp, xp = prepare(y), prepare(x)
    beta, *_ = np.linalg.lstsq(xp[kept], yp[kept], rcond=None)
    return yp - xp @ beta


@pytest.mark.parametrize("scrub", ["censor", "interpolate"])
def test_scrubbing_and_bandpass(run, tmp_path, scrub):
    bold, mask, tsv, confounds, data = run
    out = tmp_path / "denoised.nii.gz"
    section = _section(strategy="24P", fd_threshold=0.5, scrub=scrub, high_pass=0.01, low_pass=0.08)
    info = denoise_run(bold, mask, tsv, out, section)
    fd = confounds["framewise_displacement"].to_numpy()[N_DUMMY:]
    kept = ~(fd > 0.5)
    assert info["CensoredVolumes"] == [2, 20, 21, 45, N_T - 1]  # the first and last steady volumes too
    expected = _reference(data[N_DUMMY:], confounds[EXPECTED["24P"]].fillna(0).to_numpy()[N_DUMMY:], kept, 0.01, 0.08)
    got = _voxels(out)
    if scrub == "censor":
        expected = expected[kept]
        assert info["OutputVolumes"] == [v + N_DUMMY for v in np.flatnonzero(kept)]
    else:
        assert info["OutputVolumes"] == "all" or len(info["OutputVolumes"]) == N_T - N_DUMMY
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3)
    qc = info["qc"]
    assert qc["n_censored"] == 5 and qc["fraction_censored"] == pytest.approx(5 / (N_T - N_DUMMY))
    assert qc["remaining_time_s"] == pytest.approx((N_T - N_DUMMY - 5) * TR)
    assert qc["max_fd"] == pytest.approx(0.9) and qc["mean_fd"] == pytest.approx(np.nanmean(fd))


def test_standardize_and_dummy_count(run, tmp_path):
    bold, mask, tsv, confounds, data = run
    out = tmp_path / "z.nii.gz"
    info = denoise_run(bold, mask, tsv, out, _section(strategy="gsr_only", dummy_scans=5, standardize=True))
    assert info["DummyVolumes"] == 5
    got = _voxels(out)
    np.testing.assert_allclose(got.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(got.std(0, ddof=1), 1, atol=1e-5)
    # the tSNR of the input after the dummies, median over voxels
    y = data[5:]
    assert info["qc"]["median_tsnr"] == pytest.approx(np.median(y.mean(0) / y.std(0, ddof=1)), rel=1e-5)


def test_older_fmriprep_compcor_columns(tmp_path):
    bold, mask, tsv, confounds, _ = _write_run(tmp_path / "old")
    renamed = confounds.rename(columns={**{f"a_comp_cor_{k:02d}": f"c_comp_cor_{k:02d}" for k in range(5)},
                                        **{f"a_comp_cor_{k:02d}": f"w_comp_cor_{k - 6:02d}" for k in range(6, 11)}})
    renamed.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    tsv.with_suffix(".json").unlink()
    info = denoise_run(bold, mask, tsv, tmp_path / "o.nii.gz", _section(strategy="acompcor"))
    assert info["ConfoundRegressors"][12:22] == [f"w_comp_cor_{k:02d}" for k in range(5)] + [f"c_comp_cor_{k:02d}" for k in range(5)]


def test_missing_inputs_are_named(run, tmp_path):
    bold, mask, tsv, confounds, _ = run
    # only 'combined' components: aCompCor needs the WM and CSF ones
    tsv.with_suffix(".json").write_text(json.dumps({f"a_comp_cor_{k:02d}": {"Mask": "combined"} for k in range(15)}))
    with pytest.raises(InputError, match=r"desc-confounds_timeseries.tsv: aCompCor needs 5 components of the WM mask"):
        denoise_run(bold, mask, tsv, tmp_path / "o.nii.gz", _section(strategy="acompcor"))
    confounds.drop(columns=["csf_power2"]).to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError, match="needs the confound column 'csf_power2'"):
        denoise_run(bold, mask, tsv, tmp_path / "o.nii.gz", _section(strategy="36P"))
    confounds.iloc[:-5].to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputError, match=f"{N_T - 5} confound rows for {N_T} volumes"):
        denoise_run(bold, mask, tsv, tmp_path / "o.nii.gz", _section())
    assert not (tmp_path / "o.nii.gz").exists()


def test_filter_above_nyquist_rejected(run, tmp_path):
    bold, mask, tsv, _, _ = run
    with pytest.raises(ValueError, match="'low_pass' must lie in"):
        denoise_run(bold, mask, tsv, tmp_path / "o.nii.gz", _section(low_pass=0.3))


def _shortened(bold, tsv, confounds, n):
    """The run cut to its first ``n`` volumes (BOLD and confounds)."""
    img = nib.load(bold)
    short = nib.Nifti1Image(np.asarray(img.dataobj)[..., :n], img.affine, img.header)
    nib.save(short, bold)
    confounds.iloc[:n].to_csv(tsv, sep="\t", index=False, na_rep="n/a")


def test_denoise_step_refuses_a_strategy_that_leaves_too_few_degrees_of_freedom(tmp_path):
    """36P on 20 volumes (2 dummies): 18 kept volumes cannot hold mean, trend and 36 regressors, so
    nothing is left (0 degrees of freedom); the step says so before writing anything, naming the
    strategy, the volumes, the regressors and the config keys."""
    import dataclasses

    from fmriflow.steps import denoise_step

    bold, mask, tsv, confounds, _ = _write_run(tmp_path / "fmriprep")
    _shortened(bold, tsv, confounds, 20)
    section = dataclasses.asdict(_section(strategy="36P"))
    out, out_qc = tmp_path / "out" / "denoised_bold.nii.gz", tmp_path / "out" / "denoised_qc.tsv"
    pattern = (r"strategy '36P' leaves 0 degrees of freedom, fewer than the minimum of 10: 18 volumes kept "
               r"\(20 in, 2 dummy, 0 censored\), 38 parameters to fit \(mean, linear trend and 36 regressors: "
               r"trans_x, trans_x_derivative1, .* global_signal_derivative1_power2\) "
               r"\(denoise\.strategy is \"36P\", allowed: .*; qc\.min_degrees_of_freedom is 10, allowed: .*null")
    with pytest.raises(InputError, match=pattern) as failure:
        denoise_step("sub-01/func/sub-01_task-rest", str(bold), str(mask), str(tsv), str(out), str(out_qc),
                     min_degrees_of_freedom=10, **section)
    assert str(failure.value).startswith(f"{tsv}: ")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    # null: no refusal (the run QC still reports the 0 degrees of freedom)
    denoise_step("sub-01/func/sub-01_task-rest", str(bold), str(mask), str(tsv), str(out), str(out_qc),
                 min_degrees_of_freedom=None, **section)
    assert pd.read_csv(out_qc, sep="\t")["degrees_of_freedom"].tolist() == [0]


def test_denoise_step_keeps_a_run_with_enough_degrees_of_freedom(tmp_path):
    """70 volumes, 2 dummies, 5 censored: 63 kept - (2 + 36) = 25 degrees of freedom >= 25."""
    import dataclasses

    from fmriflow.steps import denoise_step

    bold, mask, tsv, _, _ = _write_run(tmp_path / "fmriprep")
    section = dataclasses.asdict(_section(strategy="36P", fd_threshold=0.5))
    out, out_qc = tmp_path / "out" / "denoised_bold.nii.gz", tmp_path / "out" / "denoised_qc.tsv"
    denoise_step("sub-01/func/sub-01_task-rest", str(bold), str(mask), str(tsv), str(out), str(out_qc),
                 min_degrees_of_freedom=25, **section)
    assert pd.read_csv(out_qc, sep="\t")["degrees_of_freedom"].tolist() == [25] and out.is_file()
    with pytest.raises(InputError, match="leaves 25 degrees of freedom, fewer than the minimum of 26"):
        denoise_step("sub-01/func/sub-01_task-rest", str(bold), str(mask), str(tsv), str(out), str(out_qc),
                     min_degrees_of_freedom=26, **section)


@pytest.mark.parametrize("order", ["F", "C"])
def test_in_mask_voxels_round_trip_to_the_masked_image(order):
    """Voxels picked in Fortran order and put back give the image zeroed outside the mask, into
    a fresh array or into the input's memory (``reuse``), and with fewer output volumes."""
    from fmriflow.denoise import in_mask_series, unmasked

    rng = np.random.default_rng(3)
    data = np.asarray(rng.normal(size=(5, 4, 3, 6)).astype(np.float32), order=order)
    mask = rng.random((5, 4, 3)) > 0.4
    expected = np.where(mask[..., None], data, 0)
    series = in_mask_series(data, mask)
    assert series.shape == (6, mask.sum())
    np.testing.assert_array_equal(np.sort(series, axis=1), np.sort(data[mask].T, axis=1))
    np.testing.assert_array_equal(unmasked(series, mask), expected)
    np.testing.assert_array_equal(unmasked(series[:4], mask), expected[..., :4])
    reused = unmasked(series[:4], mask, reuse=data)
    np.testing.assert_array_equal(reused, expected[..., :4])
    assert np.shares_memory(reused, data) == (order == "F")
