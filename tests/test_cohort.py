"""The benchmark cohort generator: its correlations and autocorrelations against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmriflow.demo.cohort import CohortSpec, simulate_cohort, write_cohort

# no variability between subjects or sites and no measurement noise: every subject's population
# correlation and lag-1 autocorrelation then have closed forms
EXACT = dict(n_subjects=60, n_sites=3, n_regions=21, n_networks=3, n_volumes=3000, subject_sd=0.0, global_sd=0.0,
             site_sd=0.0, noise_sd=(0.0, 0.0), affected_networks=(0,), effect_loading=0.4, delta_phi=0.25,
             age_coupling=0.0, age_amplitude=0.0)


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


def test_age_weakens_within_network_coupling_and_amplitude():
    """Each subject's within-network correlation is (lam (1 - c z))^2 + g^2 and its signal variance
    (1 - a z)^2, z = its age scaled to [-1, 1]: the closed forms, subject by subject."""
    spec = CohortSpec(**{**EXACT, "n_subjects": 30, "n_volumes": 4000, "effect_loading": 0.0, "delta_phi": 0.0,
                         "age_coupling": 0.2, "age_amplitude": 0.3})
    cohort = simulate_cohort(spec)
    age = cohort.participants["age"].to_numpy()
    assert age.min() >= 18 and age.max() <= 65 and age.std() > 8
    z = (age - 41.5) / 23.5
    same = (cohort.networks[:, None] == cohort.networks[None, :]) & ~np.eye(spec.n_regions, dtype=bool)
    within = np.array([np.corrcoef(s)[same].mean() for s in cohort.timeseries.astype(float)])
    expected = (spec.network_loading * (1 - 0.2 * z)) ** 2 + spec.global_loading ** 2
    assert np.abs(within - expected).max() < 0.04
    variance = cohort.timeseries.astype(float).var(axis=-1).mean(axis=-1)
    np.testing.assert_allclose(variance, (1 - 0.3 * z) ** 2, rtol=0.08)
    assert np.corrcoef(age, within)[0, 1] < -0.9  # older: weaker coupling


def test_the_seed_decides_the_cohort():
    small = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=3))
    again = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=3))
    other = simulate_cohort(CohortSpec(n_subjects=5, n_regions=14, n_volumes=50, seed=4))
    assert np.array_equal(small.timeseries, again.timeseries)
    assert not np.array_equal(small.timeseries, other.timeseries)


def test_loadings_that_leave_no_unique_variance_are_refused():
    with pytest.raises(ValueError, match="loadings"):
        CohortSpec(network_loading=0.8, global_loading=0.5)
    with pytest.raises(ValueError, match="age_amplitude must be in"):
        CohortSpec(age_amplitude=1.2)


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
