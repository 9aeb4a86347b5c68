"""Pearson FC against numpy's corrcoef; group averaging against a closed form."""

import numpy as np
import pandas as pd
import pytest

from fmriflow.connectivity import fisher_mean, pearson


def test_pearson_equals_corrcoef():
    rng = np.random.default_rng(0)
    ts = pd.DataFrame(rng.standard_normal((50, 30)) @ rng.standard_normal((30, 30)), columns=[f"r{i}" for i in range(30)])
    fc = pearson(ts)
    np.testing.assert_allclose(fc.to_numpy(), np.corrcoef(ts.to_numpy(), rowvar=False), atol=1e-10)
    assert list(fc.index) == list(ts.columns) == list(fc.columns)


def test_nan_and_constant_regions_stay_as_nan_rows():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((40, 6))
    values[:, 2] = np.nan
    values[:, 4] = 3.0
    fc = pearson(pd.DataFrame(values, columns=list("abcdef"))).to_numpy()
    valid = [0, 1, 3, 5]
    np.testing.assert_allclose(fc[np.ix_(valid, valid)], np.corrcoef(values[:, valid], rowvar=False), atol=1e-10)
    for bad in (2, 4):
        assert np.isnan(fc[bad]).all() and np.isnan(fc[:, bad]).all()


def test_too_short():
    with pytest.raises(ValueError, match="at least 3"):
        pearson(pd.DataFrame(np.ones((2, 3))))


def test_fisher_mean_closed_form():
    a = np.array([[1.0, 0.2], [0.2, 1.0]])
    b = np.array([[1.0, 0.6], [0.6, 1.0]])
    expected = np.tanh((np.arctanh(0.2) + np.arctanh(0.6)) / 2)
    np.testing.assert_allclose(fisher_mean([a, b]), [[1, expected], [expected, 1]])


def _series(n_t=60, n_r=12, seed=2):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((n_r, n_r)) * 0.4 + np.eye(n_r)
    return pd.DataFrame(rng.standard_normal((n_t, n_r)) @ mix, columns=[f"r{i}" for i in range(n_r)])


def test_partial_equals_nilearn():
    from nilearn.connectome import ConnectivityMeasure

    from fmriflow.connectivity import partial

    ts = _series()
    ref = ConnectivityMeasure(kind="partial correlation").fit_transform([ts.to_numpy()])[0]
    np.testing.assert_allclose(partial(ts).to_numpy(), ref, atol=1e-10)


def test_partial_keeps_nan_regions():
    from fmriflow.connectivity import partial

    ts = _series()
    ts["r3"] = np.nan
    out = partial(ts).to_numpy()
    assert np.isnan(out[3]).all() and np.isfinite(np.delete(np.delete(out, 3, 0), 3, 1)).all()


def test_tangent_matches_closed_form_for_two_runs():
    """The geometric mean of two SPD matrices has a closed form; the tangent vectors are log maps."""
    from scipy.linalg import fractional_matrix_power, logm, sqrtm
    from sklearn.covariance import LedoitWolf

    from fmriflow.connectivity import tangent

    runs = [_series(seed=s) for s in (3, 4)]
    stack, reference = tangent(runs)
    c1, c2 = (LedoitWolf().fit(r.to_numpy()).covariance_ for r in runs)
    c1_half, c1_mhalf = sqrtm(c1), fractional_matrix_power(c1, -0.5)
    geo = c1_half @ sqrtm(c1_mhalf @ c2 @ c1_mhalf) @ c1_half
    np.testing.assert_allclose(reference, geo.real, atol=1e-5)
    whiten = fractional_matrix_power(geo, -0.5).real
    for matrix, cov in zip(stack, (c1, c2)):
        np.testing.assert_allclose(matrix, logm(whiten @ cov @ whiten).real, atol=1e-5)


def test_tangent_reference_only_from_training_runs():
    from nilearn.connectome import ConnectivityMeasure

    from fmriflow.connectivity import tangent

    runs = [_series(seed=s) for s in range(5)]
    stack, reference = tangent(runs, fit_on=[0, 1, 2])
    changed = [r.copy() for r in runs]
    changed[4] = changed[4] * 10 + 3  # a test run must not move the reference
    stack2, reference2 = tangent(changed, fit_on=[0, 1, 2])
    np.testing.assert_allclose(reference, reference2)
    np.testing.assert_allclose(stack[:4], stack2[:4])
    ref = ConnectivityMeasure(kind="tangent").fit([r.to_numpy() for r in runs[:3]])
    np.testing.assert_allclose(reference, ref.mean_, atol=1e-8)


def test_sliding_window_equals_windowed_corrcoef():
    from fmriflow.connectivity import sliding_window

    ts = _series(n_t=50)
    dyn = sliding_window(ts, window=20, step=10)
    assert dyn.shape == (4, 12, 12)
    for i, start in enumerate(range(0, 31, 10)):
        np.testing.assert_allclose(dyn[i], np.corrcoef(ts.to_numpy()[start:start + 20], rowvar=False), atol=1e-10)
    with pytest.raises(ValueError, match="window"):
        sliding_window(ts, window=60, step=1)


def test_pearson_equals_nilearn_correlation():
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    ts = _series()
    ref = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()).fit_transform([ts.to_numpy()])[0]
    np.testing.assert_allclose(pearson(ts).to_numpy(), ref, atol=1e-10)


def test_group_connectivity_step_without_group_column_notes_the_config_key(tmp_path):
    """report.group_column: null writes an all-NaN difference whose sidecar names the key."""
    from fmriflow.io import read_json, read_tsv, write_tsv
    from fmriflow.provenance import sidecar_path
    from fmriflow.steps import group_connectivity_step

    names = ["R1", "R2", "R3"]
    matrices = []
    for k, subject in enumerate(["01", "02"]):
        path = tmp_path / f"sub-{subject}_task-rest_relmat.tsv"
        values = np.full((3, 3), 0.1 * (k + 1))
        np.fill_diagonal(values, 1.0)
        write_tsv(path, pd.DataFrame(values, index=pd.Index(names, name="Node"), columns=names), index=True)
        matrices.append(str(path))
    participants = tmp_path / "participants.tsv"
    write_tsv(participants, pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "group": ["a", "b"]}))
    mean, diff = tmp_path / "mean.tsv", tmp_path / "diff.tsv"
    for column, note in ((None, "report.group_column is null"),
                         ("site", f"report.group_column 'site' is not a column of {participants}")):
        group_connectivity_step(matrices, str(participants), column, str(mean), str(diff))
        assert np.isnan(read_tsv(diff, index_col=0).to_numpy()).all()
        assert read_json(sidecar_path(diff))["Note"] == note
