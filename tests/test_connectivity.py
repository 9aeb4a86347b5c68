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
