"""The benchmark cohort generator: its correlations and autocorrelations against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmriflow.demo.cohort import CohortSpec, simulate_cohort, write_cohort

# no variability between subjects or sites and no measurement noise: every subject's population
# correlation and lag-1 autocorrelation then have closed forms
EXACT = dict(n_subjects=60, n_sites=3, n_regions=21, n_networks=3, n_volumes=3000, subject_sd=0.0, global_sd=0.0,
             site_sd=0.0, noise_sd=(0.0, 0.0), affected_networks=(0,), effect_loading=0.4, delta_phi=0.25)


def _mean_corr(series: np.ndarray) -> np.ndarray:
    return np.mean([np.corrcoef(s) for s in series], axis=0)


def _lag1(series: np.ndarray) -> np.ndarray:
    x = series - series.mean(axis=-1, keepdims=True)
    return (x[..., 1:] * x[..., :-1]).sum(-1) / (x * x).sum(-1)


@pytest.fixture(scope="module")
def exact():
    return simulate_cohort(CohortSpec(**EXACT))


def test_correlations_equal_the_closed_form(exact):
    spec, net = exact.spec, exact.networks
    lam, g, h = spec.network_loading, spec.global_loading, spec.effect_loading
    same = net[:, None] == net[None, :]
    control = np.where(same, lam ** 2 + g ** 2, g ** 2)
    affected = np.isin(net, spec.affected_networks)
    patient = control + h ** 2 * np.outer(affected, affected)
    group = exact.participants["group"].to_numpy()
    assert 10 < group.sum() < 50
    off = ~np.eye(spec.n_regions, dtype=bool)
    for label, expected in ((0, control), (1, patient)):
        observed = _mean_corr(exact.timeseries[group == label])
        assert np.abs(observed - expected)[off].max() < 0.03, label
    # the planted difference that the module reports
    np.testing.assert_allclose(exact.fc_difference(), (patient - control) * off)


def test_patients_have_slower_dynamics_at_equal_variance(exact):
    spec, net = exact.spec, exact.networks
    lam, g, h = spec.network_loading, spec.global_loading, spec.effect_loading
    affected = np.isin(net, spec.affected_networks)
    d_control = 1 - lam ** 2 - g ** 2
    group = exact.participants["group"].to_numpy()
    lag1 = _lag1(exact.timeseries.astype(float))
    # autocovariance at lag 1 of a sum of independent unit AR(1)s: sum of loading^2 * phi
    control = lam ** 2 * spec.phi_net + g ** 2 * spec.phi_net + d_control * spec.phi_unique
    patient_affected = (lam ** 2 * (spec.phi_net + spec.delta_phi) + g ** 2 * spec.phi_net + h ** 2 * spec.phi_net
                        + (d_control - h ** 2) * spec.phi_unique)
    assert abs(lag1[group == 0].mean() - control) < 0.01
    assert abs(lag1[group == 1][:, ~affected].mean() - control) < 0.01
    assert abs(lag1[group == 1][:, affected].mean() - patient_affected) < 0.01
    assert np.abs(exact.timeseries.var(axis=-1).mean() - 1.0) < 0.03  # unit signal variance


def test_the_seed_decides_the_cohort():
    small = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=3))
    again = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=3))
    other = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=4))
    assert np.array_equal(small.timeseries, again.timeseries)
    assert not np.array_equal(small.timeseries, other.timeseries)


def test_loadings_that_leave_no_unique_variance_are_refused():
    with pytest.raises(ValueError, match="loadings"):
        CohortSpec(network_loading=0.8, global_loading=0.5)


def test_written_cohort_reads_back(tmp_path):
    cohort = simulate_cohort(CohortSpec(n_subjects=3, n_regions=10, n_networks=2, n_volumes=40))
    root = write_cohort(cohort, tmp_path / "cohort")
    participants = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str)
    assert list(participants["participant_id"]) == ["sub-0001", "sub-0002", "sub-0003"]
    table = pd.read_csv(root / "sub-0002" / "func" / "sub-0002_task-rest_timeseries.tsv", sep="\t")
    assert table.shape == (40, 10)
    np.testing.assert_allclose(table.to_numpy().T, cohort.timeseries[1], atol=1e-5)
    regions = pd.read_csv(root / "regions.tsv", sep="\t")
    assert list(regions.columns) == ["index", "name", "network", "x", "y", "z"] and len(regions) == 10
