"""A benchmark cohort of region time series: many subjects, several sites, weak group effects.

The demo (``fmriflow.demo``) is 24 subjects with an effect a few dozen subjects can show. Model
comparisons need what real diagnosis studies look like: hundreds to thousands of subjects from
several sites, FC baselines around AUROC 0.7-0.75, and an effect a sequence model could use
beyond zero-lag FC. This module simulates such a cohort directly as region time series (no
voxels), in memory; ``write_cohort`` stores it as plain per-run files with a sidecar.

Generative model (per subject ``s`` of site ``c``; ``R`` regions in ``K`` networks)
-------------------------------------------------------------------------------------
Latent factors, each a unit-variance AR(1) (lag-1 autocorrelation ``phi``):
    one per network (``phi_net``), one global (``phi_net``), and for patients one more, the
    *effect* factor. Unique parts ``u_r``: AR(1) with ``phi_unique``.
Signal
    ``x_r(t) = l_s,k(r) f_k(t) + g_s f_global(t) + [patient] h f_effect(t) a_r + sqrt(d_r) u_r(t)``
    with ``l_s,k = network_loading * exp(N(0, subject_sd^2)) * site_k`` (inter-subject and
    site variability of within-network coupling), ``g_s = global_loading * exp(N(0,
    global_sd^2))`` (the global signal varies most between people), ``a_r = 1`` on the
    regions of the affected networks and ``d_r = 1 - l^2 - g^2 - h^2 a_r`` (unit signal
    variance).
Group effect, two parts
    - connectivity: patients' affected networks share the effect factor, so their
      correlation rises by ``h^2`` within and between those networks (zero-lag FC sees it);
    - dynamics: patients' affected-network factors have ``phi_net + delta_phi``: slower
      dynamics at unchanged variance and unchanged zero-lag correlation, which FC cannot
      see and a model of the time series can.
Measurement
    ``y = x + sigma_c e`` with white noise whose SD ``sigma_c`` differs by site (scanner
    SNR: a site effect that attenuates every correlation), and a site offset of the
    patients' share (``prevalence`` drawn per site): site and diagnosis are confounded a
    little, as in multi-site cohorts.
Age (drawn ``U(18, 65)`` before the signals; ``z = (age - 41.5) / 23.5`` in [-1, 1])
    Two effects reported in the ageing literature, both linear in ``z`` and declining with age:
    within-network coupling (Andrews-Hanna et al. 2007, Chan et al. 2014: weaker within-network
    correlation in older adults) multiplies every ``l_s,k`` by ``1 - age_coupling z``, and the
    resting-state fluctuation amplitude (Garrett et al. 2010, Tsvetanov et al. 2015: lower BOLD
    variability with age, much of it vascular) multiplies the signal ``x`` by
    ``1 - age_amplitude z`` before the measurement noise (so the older also have lower SNR).
    Defaults 0.1 and 0.15: old/young within-network loading ratio 0.82, amplitude ratio 0.74,
    about the size of the subject-to-subject variability above; age is then predictable from the
    data (a ridge on FC and amplitudes), not read off it.

The defaults were set from a sweep at 1,000 subjects x 200 volumes (logistic L2 on Fisher-z FC, C
by inner-CV AUROC, 5 folds): effect loading 0.16 gave AUROC 0.60 and 0.25 gave 0.79 (lag-1
autocorrelations alone, delta_phi 0.08: 0.67); 0.22 aims at the 0.7-0.75 of real diagnosis studies
(``benchmarks/cohort_benchmark.py`` measures it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


MAX_SHARED = 0.85  # most of a region's signal variance that the factors may take


@dataclass(frozen=True, kw_only=True)
class CohortSpec:
    """Size, effects and variability of a benchmark cohort (see the module docstring)."""

    n_subjects: int = 1000
    n_sites: int = 8
    n_regions: int = 100
    n_networks: int = 7
    n_volumes: int = 200
    repetition_time: float = 2.0
    network_loading: float = 0.6
    global_loading: float = 0.3
    subject_sd: float = 0.15
    global_sd: float = 0.35
    site_sd: float = 0.08
    phi_net: float = 0.6
    phi_unique: float = 0.3
    affected_networks: tuple[int, ...] = (0, 1)
    effect_loading: float = 0.22
    delta_phi: float = 0.08
    noise_sd: tuple[float, float] = (0.4, 0.8)
    prevalence: tuple[float, float] = (0.35, 0.65)
    age_range: tuple[float, float] = (18.0, 65.0)
    age_coupling: float = 0.1  # within-network loading x (1 - age_coupling z), z in [-1, 1] over age_range
    age_amplitude: float = 0.15  # signal amplitude x (1 - age_amplitude z)
    seed: int = 0

    def __post_init__(self):
        shared = self.network_loading ** 2 + self.global_loading ** 2 + self.effect_loading ** 2
        if shared >= MAX_SHARED:
            raise ValueError(f"CohortSpec: network, global and effect loadings have squares summing to {shared:.2f};"
                             f" they must stay below {MAX_SHARED} to leave unique variance")
        if not 0 <= self.phi_net + self.delta_phi < 1:
            raise ValueError(f"CohortSpec: phi_net + delta_phi must be in [0, 1), got {self.phi_net + self.delta_phi}")
        for name in ("age_coupling", "age_amplitude"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"CohortSpec: {name} must be in [0, 1) (a factor 1 - {name} z stays positive); "
                                 f"got {getattr(self, name)}")
        if not self.age_range[0] < self.age_range[1]:
            raise ValueError(f"CohortSpec: age_range must be (low, high) with low < high; got {self.age_range}")

    def age_z(self, age: np.ndarray) -> np.ndarray:
        """Age mapped to [-1, 1] over ``age_range`` (the scale of the age effects)."""
        low, high = self.age_range
        return (np.asarray(age, dtype=float) - (low + high) / 2) / ((high - low) / 2)


@dataclass
class Cohort:
    """Region time series (subjects, regions, volumes), participants and the planted truth."""

    timeseries: np.ndarray
    participants: pd.DataFrame
    networks: np.ndarray
    coordinates: np.ndarray
    spec: CohortSpec

    @property
    def affected_regions(self) -> np.ndarray:
        return np.flatnonzero(np.isin(self.networks, self.spec.affected_networks))

    def fc_difference(self) -> np.ndarray:
        """The planted difference of the population correlation, patients minus controls."""
        a = np.isin(self.networks, self.spec.affected_networks).astype(float)
        diff = self.spec.effect_loading ** 2 * np.outer(a, a)
        np.fill_diagonal(diff, 0.0)
        return diff


def _ar1(rng: np.random.Generator, phi: np.ndarray, n_volumes: int) -> np.ndarray:
    """Unit-variance stationary AR(1) series, one per entry of ``phi`` (shape (len(phi), T))."""
    phi = np.asarray(phi, dtype=float)[:, None]
    eps = rng.standard_normal((phi.shape[0], n_volumes))
    out = np.empty_like(eps)
    out[:, 0] = eps[:, 0]
    scale = np.sqrt(1 - phi[:, 0] ** 2)
    for t in range(1, n_volumes):
        out[:, t] = phi[:, 0] * out[:, t - 1] + scale * eps[:, t]
    return out


def _layout(spec: CohortSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Network of each region (contiguous blocks) and MNI-like coordinates clustered by network."""
    networks = np.arange(spec.n_regions) * spec.n_networks // spec.n_regions
    centres = rng.normal(0, 35, size=(spec.n_networks, 3)) * [1.0, 1.3, 0.9]
    coordinates = centres[networks] + rng.normal(0, 12, size=(spec.n_regions, 3))
    return networks, np.round(coordinates, 1)


def _subject(spec: CohortSpec, rng: np.random.Generator, networks: np.ndarray, site_loading: np.ndarray,
             noise_sd: float, patient: bool, age_z: float) -> np.ndarray:
    affected = np.isin(np.arange(spec.n_networks), spec.affected_networks)
    loading = spec.network_loading * np.exp(rng.normal(0, spec.subject_sd, spec.n_networks)) * site_loading
    loading = loading * (1 - spec.age_coupling * age_z)
    global_loading = spec.global_loading * np.exp(rng.normal(0, spec.global_sd))
    phi = np.full(spec.n_networks + 2, spec.phi_net)
    if patient:
        phi[:spec.n_networks][affected] += spec.delta_phi
    factors = _ar1(rng, phi, spec.n_volumes)  # networks, global, effect
    a = affected[networks].astype(float) * (spec.effect_loading if patient else 0.0)
    l_r = loading[networks]
    # a subject drawn far out keeps some unique variance: network and global loadings shrink together
    shared = l_r ** 2 + global_loading ** 2 + a ** 2
    shrink = np.sqrt(np.clip((MAX_SHARED - a ** 2) / np.maximum(shared - a ** 2, 1e-12), None, 1.0))
    l_r, global_loading = l_r * shrink, global_loading * shrink
    unique_var = 1 - l_r ** 2 - global_loading ** 2 - a ** 2
    unique = _ar1(rng, np.full(spec.n_regions, spec.phi_unique), spec.n_volumes)
    x = (l_r[:, None] * factors[networks] + global_loading[:, None] * factors[spec.n_networks]
         + a[:, None] * factors[spec.n_networks + 1] + np.sqrt(unique_var)[:, None] * unique)
    x = x * (1 - spec.age_amplitude * age_z)
    return x + noise_sd * rng.standard_normal(x.shape)


def simulate_cohort(spec: CohortSpec = CohortSpec()) -> Cohort:
    """Draw a cohort (seeded by ``spec.seed``: the same spec gives the same arrays)."""
    rng = np.random.default_rng(spec.seed)
    networks, coordinates = _layout(spec, rng)
    site_loading = np.exp(rng.normal(0, spec.site_sd, (spec.n_sites, spec.n_networks)))
    site_noise = rng.uniform(*spec.noise_sd, spec.n_sites)
    site_prevalence = rng.uniform(*spec.prevalence, spec.n_sites)
    site = rng.integers(0, spec.n_sites, spec.n_subjects)
    group = (rng.random(spec.n_subjects) < site_prevalence[site]).astype(int)
    age = np.round(rng.uniform(*spec.age_range, spec.n_subjects), 1)
    age_z = spec.age_z(age)
    series = np.empty((spec.n_subjects, spec.n_regions, spec.n_volumes), dtype=np.float32)
    for s in range(spec.n_subjects):
        subject_rng = np.random.default_rng([spec.seed, s])
        series[s] = _subject(spec, subject_rng, networks, site_loading[site[s]], site_noise[site[s]], bool(group[s]),
                             float(age_z[s]))
    width = max(4, len(str(spec.n_subjects)))
    participants = pd.DataFrame({
        "participant_id": [f"sub-{s + 1:0{width}d}" for s in range(spec.n_subjects)],
        "site": [f"site{c + 1:02d}" for c in site],
        "group": group,
        "age": age,
        "sex": rng.choice(["F", "M"], spec.n_subjects),
    })
    return Cohort(series, participants, networks, coordinates, spec)


def write_cohort(cohort: Cohort, root: str | Path) -> Path:
    """One ``<participant>_task-rest_timeseries.tsv`` per subject (regions as columns) + sidecar,
    ``participants.tsv``, ``regions.tsv`` (name, network, MNI x/y/z) and ``ground_truth.json``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"R{r + 1:03d}" for r in range(cohort.spec.n_regions)]
    sidecar = {"RepetitionTime": cohort.spec.repetition_time, "Atlas": "cohort", "Simulated": True}
    for pid, series in zip(cohort.participants["participant_id"], cohort.timeseries):
        stem = root / pid / "func" / f"{pid}_task-rest_timeseries"
        stem.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(series.T, columns=names).to_csv(f"{stem}.tsv", sep="\t", index=False, float_format="%.5f")
        Path(f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    cohort.participants.to_csv(root / "participants.tsv", sep="\t", index=False)
    x, y, z = cohort.coordinates.T
    pd.DataFrame({"index": np.arange(1, len(names) + 1), "name": names, "network": cohort.networks,
                  "x": x, "y": y, "z": z}).to_csv(root / "regions.tsv", sep="\t", index=False)
    truth = {**asdict(cohort.spec), "affected_regions": [names[r] for r in cohort.affected_regions]}
    (root / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return root
